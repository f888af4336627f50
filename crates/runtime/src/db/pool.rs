//! Where single statements run: sqlx's pool behind a stack of parked connections.

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Either, Execute, Executor, SqlStr};

/// The service's connections for single statements: sqlx's pool, with the connections whose
/// statement ran to its end kept on a stack in front of it.
///
/// sqlx sends every connection handed back to its pool a round trip of its own (a Sync and its
/// ReadyForQuery on PostgreSQL) to check it: as many round trips again as statements, and a
/// wake-up of the database backend for each. A connection whose statement ran to its end goes
/// on the stack unchecked. One cut short (a dropped future) or failed goes back to sqlx, which
/// checks it once its statement is over, so the next statement never waits behind it. The
/// stack holds at most half the pool, so transactions, which take their connections from sqlx,
/// always find some. Last in, first out: the few connections in use stay the ones whose
/// prepared statements are warm.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    sqlx: AnyPool,
    idle: Mutex<Vec<PoolConnection<Any>>>,
    max_idle: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("sqlx", &self.inner.sqlx).field("max_idle", &self.inner.max_idle).finish()
    }
}

impl Pool {
    pub(super) fn new(sqlx: AnyPool, max_connections: u32) -> Self {
        let max_idle = usize::try_from(max_connections / 2).unwrap_or(usize::MAX).max(1);
        Self { inner: Arc::new(PoolInner { sqlx, idle: Mutex::new(Vec::new()), max_idle }) }
    }

    async fn acquire(&self) -> Result<Held, sqlx::Error> {
        let parked = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let connection = match parked {
            Some(connection) => connection,
            None => self.inner.sqlx.acquire().await?,
        };
        Ok(Held { connection: Some(connection), home: self.inner.clone(), finished: false })
    }

    /// sqlx's pool itself, for transactions and migrations.
    pub(super) fn sqlx(&self) -> &AnyPool {
        &self.inner.sqlx
    }

    /// Closes sqlx's pool, which waits for every connection: the parked ones go back first.
    pub(super) async fn close(&self) {
        let closing = self.inner.sqlx.close();
        let parked = std::mem::take(&mut *self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(parked);
        closing.await;
    }
}

/// A connection taken for one statement; `finished` once the statement ran to its end.
struct Held {
    connection: Option<PoolConnection<Any>>,
    home: Arc<PoolInner>,
    finished: bool,
}

impl Held {
    fn connection(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        self.connection.as_deref_mut().ok_or(sqlx::Error::PoolClosed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else { return };
        if self.finished && !self.home.sqlx.is_closed() {
            let mut idle = self.home.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.home.max_idle {
                idle.push(connection);
            }
        }
        // Otherwise dropping it hands it back to sqlx, which checks it.
    }
}

impl<'p> Executor<'p> for &'_ Pool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        // Collected before they are passed on, so the connection is parked before the caller
        // sees a row; the statements here return pages, not unbounded streams.
        futures::stream::once(async move {
            let mut held = pool.acquire().await?;
            let results: Vec<_> = held.connection()?.fetch_many(query).collect().await;
            held.finished = results.iter().all(Result::is_ok);
            Ok::<_, sqlx::Error>(futures::stream::iter(results))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut held = pool.acquire().await?;
            let row = held.connection()?.fetch_optional(query).await?;
            held.finished = true;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let pool = self.clone();
        Box::pin(async move {
            let mut held = pool.acquire().await?;
            let statement = held.connection()?.prepare_with(sql, parameters).await?;
            held.finished = true;
            Ok(statement)
        })
    }
}
