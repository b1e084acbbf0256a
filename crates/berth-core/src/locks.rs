//! One deploy, rollback or restart at a time per app.

use berth_api::LockInfo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct AppLocks {
    held: Mutex<HashMap<String, LockInfo>>,
    /// While the agent hands over to its successor: nobody takes a lock, and this says why.
    frozen: Mutex<Option<LockInfo>>,
    released: Notify,
}

pub struct AppLock {
    locks: Arc<AppLocks>,
    app: String,
}

impl Drop for AppLock {
    fn drop(&mut self) {
        self.locks.lock_map().remove(&self.app);
        self.locks.released.notify_waiters();
    }
}

impl AppLocks {
    fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, LockInfo>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the app's lock, or says who holds it.
    pub fn try_acquire(self: &Arc<Self>, app: &str, info: LockInfo) -> Result<AppLock, LockInfo> {
        let mut held = self.lock_map();
        if let Some(current) = held.get(app) {
            return Err(current.clone());
        }
        // Checked under the map's lock, like `freeze` is: no lock slips in between.
        if let Some(frozen) = self
            .frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(frozen);
        }
        held.insert(app.to_owned(), info);
        Ok(AppLock {
            locks: Arc::clone(self),
            app: app.to_owned(),
        })
    }

    /// Takes the app's lock, waiting for the holder to finish; `waiting` is told who that is.
    pub async fn acquire(
        self: &Arc<Self>,
        app: &str,
        info: LockInfo,
        waiting: impl Fn(&LockInfo),
    ) -> AppLock {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_acquire(app, info.clone()) {
                Ok(lock) => return lock,
                Err(holder) => {
                    waiting(&holder);
                    released.await;
                }
            }
        }
    }

    pub fn holder(&self, app: &str) -> Option<LockInfo> {
        self.lock_map().get(app).cloned()
    }

    /// Stops anyone from taking a lock (they are told `why`, or wait), once none is held;
    /// otherwise lists the holders, by app.
    pub fn freeze(&self, why: LockInfo) -> Result<(), Vec<(String, LockInfo)>> {
        let held = self.lock_map();
        if !held.is_empty() {
            let mut holders: Vec<(String, LockInfo)> =
                held.iter().map(|(a, l)| (a.clone(), l.clone())).collect();
            holders.sort_by(|a, b| a.0.cmp(&b.0));
            return Err(holders);
        }
        *self.frozen.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        Ok(())
    }

    /// Who froze the locks, while they are frozen.
    pub fn frozen_by(&self) -> Option<LockInfo> {
        self.frozen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets locks be taken again (waiters go on).
    pub fn thaw(&self) {
        {
            let _held = self.lock_map();
            *self.frozen.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.released.notify_waiters();
    }
}

/// A time in milliseconds since the epoch as people read it in messages (when a lock
/// was taken).
pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(who: &str) -> LockInfo {
        LockInfo {
            operation: "deploy".into(),
            holder: who.into(),
            since: 1,
        }
    }

    #[tokio::test]
    async fn a_second_caller_is_told_who_holds_the_lock_or_waits_for_it() {
        let locks = Arc::new(AppLocks::default());
        let first = locks.try_acquire("app", info("alice")).unwrap();
        assert_eq!(
            locks.try_acquire("app", info("bob")).err().unwrap().holder,
            "alice"
        );
        assert!(
            locks.try_acquire("other", info("bob")).is_ok(),
            "locks are per app"
        );

        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("app", info("bob"), |_| {}).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(locks.holder("app").unwrap().holder, "bob");

        // Frozen only once nothing is held; then nobody gets a lock until thawed.
        let why = LockInfo {
            operation: "agent upgrade".into(),
            holder: "carol".into(),
            since: 2,
        };
        let holders = locks.freeze(why.clone()).unwrap_err();
        assert_eq!(holders[0].0, "app");
        drop(second);
        assert!(locks.holder("app").is_none());
        locks.freeze(why).unwrap();
        assert_eq!(
            locks
                .try_acquire("app", info("dave"))
                .err()
                .unwrap()
                .operation,
            "agent upgrade"
        );
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.acquire("app", info("erin"), |_| {}).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a waiter waits while frozen");
        locks.thaw();
        let lock = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(locks.holder("app").unwrap().holder, "erin");
        drop(lock);
    }
}
