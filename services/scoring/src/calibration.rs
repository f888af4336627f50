//! Every item's calibration, held in process and read by every ranking.
//!
//! A ranking looks up the difficulty of each of its candidates: about a hundred lookups per
//! request, which through a cache cost a tenth of scoring's CPU and a Redis read per request for
//! the entries that had expired. The table is small (an estimated 100 bytes an item, 100 MB for
//! a million items) and changes only through `ApplyAttempts`, whose batches version what they
//! write in commit order. So each replica loads it whole at start and then reads, once a second,
//! the rows past the last one it has. A ranking sees a difficulty at most about a second old on
//! any replica; the replica that applied a batch sees its result at once.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use alp_runtime::StoreError;

use crate::store::{CalibrationRow, Estimate, ScoringStore};

/// How often a replica reads the calibrations other replicas' batches wrote.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Rows per read, so a start over a large table holds one page of rows at a time.
const PAGE: usize = 10_000;

#[derive(Debug, Default)]
struct Table {
    by_item: HashMap<String, (Estimate, i64)>,
    /// The last row read from the database, in (version, item id) order: the next read starts
    /// past it. Only reads move it; a batch applied here says nothing of the versions before its
    /// own that this replica has not read yet.
    cursor: Option<(i64, String)>,
}

/// The calibrations; cheap to clone.
#[derive(Debug, Clone)]
pub struct Calibrations {
    table: Arc<RwLock<Table>>,
}

impl Calibrations {
    /// Every calibration in the database.
    pub async fn load(store: &ScoringStore) -> Result<Self, StoreError> {
        let calibrations = Self { table: Arc::default() };
        calibrations.catch_up(store).await?;
        Ok(calibrations)
    }

    /// Keeps reading what batches write, every [`REFRESH_EVERY`], for as long as a clone lives.
    pub fn follow(&self, store: ScoringStore) {
        let table = Arc::downgrade(&self.table);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + REFRESH_EVERY;
            let mut tick = tokio::time::interval_at(start, REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(calibrations) = Self::upgrade(&table) else { return };
                if let Err(error) = calibrations.catch_up(&store).await {
                    metrics::counter!("alp_scoring_calibration_refresh_errors_total").increment(1);
                    tracing::warn!(%error, "calibrations not refreshed; the last ones read stay in use");
                }
            }
        });
    }

    fn upgrade(table: &Weak<RwLock<Table>>) -> Option<Self> {
        table.upgrade().map(|table| Self { table })
    }

    /// Reads every row written since the last read.
    pub async fn catch_up(&self, store: &ScoringStore) -> Result<(), StoreError> {
        while self.read_on(store).await? == PAGE {}
        metrics::gauge!("alp_scoring_calibrations").set(self.len() as f64);
        Ok(())
    }

    /// One page of rows past the cursor; how many there were.
    async fn read_on(&self, store: &ScoringStore) -> Result<usize, StoreError> {
        let cursor = self.table.read().unwrap_or_else(PoisonError::into_inner).cursor.clone();
        let rows = store.calibrations_after(cursor.as_ref().map(|(v, id)| (*v, id.as_str())), PAGE).await?;
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = rows.last() {
            table.cursor = Some((last.version, last.item_id.clone()));
        }
        let count = rows.len();
        merge(&mut table, rows);
        Ok(count)
    }

    /// What a batch applied here wrote, so this replica ranks with it at once.
    pub fn applied(&self, rows: Vec<CalibrationRow>) {
        merge(&mut self.table.write().unwrap_or_else(PoisonError::into_inner), rows);
    }

    /// The difficulty of each item: its calibration, or the content's initial difficulty for an
    /// item nobody has answered yet.
    pub fn difficulties<'a>(&self, items: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<f64> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        items.into_iter().map(|(id, initial)| table.by_item.get(id).map_or(initial, |(e, _)| e.value)).collect()
    }

    fn len(&self) -> usize {
        self.table.read().unwrap_or_else(PoisonError::into_inner).by_item.len()
    }
}

/// Newer versions replace older ones; a read and a local batch may bring rows in either order.
fn merge(table: &mut Table, rows: Vec<CalibrationRow>) {
    for row in rows {
        match table.by_item.get_mut(&row.item_id) {
            Some(held) if held.1 > row.version => {}
            Some(held) => *held = (row.estimate, row.version),
            None => {
                table.by_item.insert(row.item_id, (row.estimate, row.version));
            }
        }
    }
}
