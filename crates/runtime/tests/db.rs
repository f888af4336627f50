//! The service's connections: a statement's connection goes back without sqlx's check only when
//! the statement ran to its end, so one cut short or failed never hands its leftovers to the next.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use alp_runtime::db::Dialect;
use alp_runtime::testing::on_every_backend;
use sqlx::{AssertSqlSafe, Row};

/// A statement that outlasts the 20 ms the test gives it, on either backend.
fn slow_statement(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "SELECT pg_sleep(1), 1",
        Dialect::Sqlite => {
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) \
             SELECT COUNT(*), 1 FROM n"
        }
    }
}

// sqlx's connections themselves wait out a statement cut short before the next one, so this
// passes even if such connections were parked; it guards the answers, and the test below the
// parking.
#[tokio::test]
async fn a_statement_cut_short_or_failed_leaves_nothing_for_the_next() {
    on_every_backend("pool", &[], |db| async move {
        for round in 0..3_i64 {
            // Dropped while the database is still working on it.
            let slow = sqlx::query(AssertSqlSafe(slow_statement(db.dialect()))).fetch_all(db.pool());
            assert!(tokio::time::timeout(Duration::from_millis(20), slow).await.is_err());
            let failed = sqlx::query("SELECT no_such_column FROM no_such_table").fetch_all(db.pool()).await;
            assert!(failed.is_err());
            // Each later statement gets its own answer, on whichever connection it is given.
            for i in 0..20_i64 {
                let value = round * 100 + i;
                let row = sqlx::query("SELECT $1").bind(value).fetch_one(db.pool()).await.unwrap();
                assert_eq!(row.try_get::<i64, _>(0).unwrap(), value);
                let rows = sqlx::query("SELECT $1 UNION ALL SELECT $2")
                    .bind(value)
                    .bind(-value)
                    .fetch_all(db.pool())
                    .await
                    .unwrap();
                let got: Vec<i64> = rows.iter().map(|r| r.try_get(0).unwrap()).collect();
                assert_eq!(got, vec![value, -value]);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_next_statement_does_not_wait_behind_one_cut_short() {
    on_every_backend("pool", &[], |db| async move {
        if db.dialect() != Dialect::Postgres {
            return;
        }
        // Warm: a connection is parked, the one the next statement would be given.
        sqlx::query("SELECT 1").execute(db.pool()).await.unwrap();
        let sleeping = sqlx::query("SELECT pg_sleep(5)").execute(db.pool());
        assert!(tokio::time::timeout(Duration::from_millis(50), sleeping).await.is_err());
        // Its connection is still busy for seconds; parked, it would hold this one up that long.
        let next = sqlx::query_scalar::<_, i64>("SELECT 7").fetch_one(db.pool());
        let answered = tokio::time::timeout(Duration::from_secs(2), next).await;
        assert_eq!(answered.expect("answered while the cut-short statement still runs").unwrap(), 7);
    })
    .await;
}

#[tokio::test]
async fn statements_one_after_another_reuse_one_connection() {
    on_every_backend("pool", &[], |db| async move {
        if db.dialect() != Dialect::Postgres {
            return;
        }
        let mut backends = std::collections::HashSet::new();
        for _ in 0..20 {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(db.pool()).await.unwrap();
            backends.insert(pid);
        }
        assert_eq!(backends.len(), 1, "sequential statements ran on {backends:?}");
    })
    .await;
}
