//! The audit trail of failed authentications, in bounded volume: for each client address and
//! outcome, the first few failures of every ten seconds are logged one by one, the rest as one line
//! with their count. A flood of bad keys is still on record, without filling the disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::AuthError;

/// How long one tally runs.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Failures per tally logged one by one.
pub const IN_FULL: u32 = 3;
/// Tallies kept at most; past it, failures from new addresses share one tally per outcome.
const CAPACITY: usize = 10_000;

/// Where failures come from: the client address (`None` when unknown, or for the shared tally past
/// [`CAPACITY`]) and the outcome.
type Source = (Option<IpAddr>, AuthError);

#[derive(Debug, Default)]
pub struct FailureAudit {
    tallies: Mutex<Tallies>,
}

#[derive(Debug, Default)]
struct Tallies {
    by_source: HashMap<Source, Tally>,
    /// When the oldest tally's window ends, so that a full map is swept only when that can help.
    first_end: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    started: Instant,
    logged: u32,
    counted: u64,
}

impl FailureAudit {
    /// Audits a failed authentication from `client`: one by one while its tally allows, else
    /// counted for the tally's closing line.
    pub fn failed(&self, client: Option<IpAddr>, err: AuthError, key_id: Option<&str>) {
        if self.tally(client, err, Instant::now()) {
            tracing::info!(
                target: "audit",
                outcome = err.code(),
                key_id,
                client = client.map(tracing::field::display),
                "authentication failed"
            );
        }
    }

    /// Counts a failure at `now`; whether to log it one by one. Closing lines are written after
    /// the lock is let go.
    fn tally(&self, client: Option<IpAddr>, err: AuthError, now: Instant) -> bool {
        let mut closed = Vec::new();
        let in_full = {
            let mut tallies = self.lock();
            let mut source = (client, err);
            if tallies.by_source.len() >= CAPACITY && !tallies.by_source.contains_key(&source) {
                if tallies.first_end.is_some_and(|end| end <= now) {
                    closed = tallies.close(|tally| now - tally.started >= WINDOW);
                }
                if tallies.by_source.len() >= CAPACITY {
                    source = (None, err);
                }
            }
            let fresh = Tally { started: now, logged: 0, counted: 0 };
            let tally = tallies.by_source.entry(source).or_insert(fresh);
            if now - tally.started >= WINDOW {
                closed.push((source, *tally));
                *tally = fresh;
            }
            let in_full = tally.logged < IN_FULL;
            if in_full {
                tally.logged += 1;
            } else {
                tally.counted += 1;
            }
            tallies.first_end.get_or_insert(now + WINDOW);
            in_full
        };
        closed.into_iter().for_each(report);
        in_full
    }

    /// Writes the closing line of every tally whose window has ended, or of all of them (at
    /// shutdown), and forgets them.
    pub fn close_ended(&self, all: bool) {
        let now = Instant::now();
        let closed = self.lock().close(|tally| all || now - tally.started >= WINDOW);
        closed.into_iter().for_each(report);
    }

    fn lock(&self) -> MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tallies {
    /// Takes out the tallies that `ended` says are over.
    fn close(&mut self, ended: impl Fn(&Tally) -> bool) -> Vec<(Source, Tally)> {
        let mut closed = Vec::new();
        self.by_source.retain(|source, tally| {
            let keep = !ended(tally);
            if !keep {
                closed.push((*source, *tally));
            }
            keep
        });
        self.first_end = self.by_source.values().map(|tally| tally.started + WINDOW).min();
        closed
    }
}

/// The closing line of a tally, when some of its failures were only counted.
fn report(((client, err), tally): (Source, Tally)) {
    if tally.counted > 0 {
        tracing::info!(
            target: "audit",
            outcome = err.code(),
            client = client.map(tracing::field::display),
            failures = tally.counted,
            within_seconds = WINDOW.as_secs(),
            "authentication failures not logged one by one"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failures_of_a_window_are_logged_the_rest_counted() {
        let audit = FailureAudit::default();
        let (start, client) = (Instant::now(), Some(IpAddr::from([203, 0, 113, 7])));
        let logged = |at: Duration| audit.tally(client, AuthError::Invalid, start + at);
        let first: Vec<bool> = (0..5).map(|_| logged(Duration::ZERO)).collect();
        assert_eq!(first, [true, true, true, false, false]);
        assert!(audit.tally(client, AuthError::Expired, start), "each outcome has its own tally");
        assert!(audit.tally(None, AuthError::Invalid, start), "and each address");
        assert_eq!(audit.lock().by_source[&(client, AuthError::Invalid)].counted, 2);
        assert!(logged(WINDOW), "a new window logs again");
        assert_eq!(audit.lock().by_source[&(client, AuthError::Invalid)].counted, 0);
    }

    #[test]
    fn a_flood_from_many_addresses_shares_one_tally_past_the_capacity() {
        let audit = FailureAudit::default();
        let now = Instant::now();
        for n in 0..CAPACITY as u32 + 10 {
            audit.tally(Some(IpAddr::from(n.to_be_bytes())), AuthError::Invalid, now);
        }
        let guard = audit.lock();
        let tallies = &guard.by_source;
        assert_eq!(tallies.len(), CAPACITY + 1);
        assert_eq!(tallies[&(None, AuthError::Invalid)].logged, IN_FULL);
        assert_eq!(tallies[&(None, AuthError::Invalid)].counted, 7);
    }
}
