-- The batch that last wrote each calibration, counted up under the batch lock: a replica keeps
-- every calibration in memory and catches up by reading the rows past the last one it read.
ALTER TABLE item_calibration ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX item_calibration_by_version ON item_calibration (version, item_id);
