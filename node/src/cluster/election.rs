//! Who is the active: a pure function of what this server and its joined peers say, so that
//! every server that sees the same facts decides the same, and so that it is tested alone.
//!
//! Rules:
//! - An active with a term at least this server's is followed. An active with a lower term
//!   is stale (an old active that has not noticed yet) and is not.
//! - An active that meets an active of a higher term steps down (split brain: the higher
//!   term wins). An active that meets any other server that has seen a higher term raises its
//!   own above it, so that the other can follow it (it would otherwise wait forever for an
//!   active of its term).
//! - A server alone that has seen a term newer than its data (it followed another active
//!   since its data was written), or whose newest data it received as a passive, does not
//!   elect itself: another server may hold newer data.
//! - With no active, once the election time has passed, the servers that may become active
//!   (STARTING, or PASSIVE-STANDBY) compare their data: the newest (data term, then LSN)
//!   wins, then the lowest name. The winner becomes active with a term above every term it
//!   has seen; the others wait for it.

use super::state::{State, Status};

/// One server as seen by the election.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Its name.
    pub name: &'a str,
    /// What it says.
    pub status: &'a Status,
}

/// What this server should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes.
    Stay,
    /// Become the active with this term.
    BecomeActive {
        /// The new term.
        term: u64,
    },
    /// Follow this active (as a passive), at its term.
    Follow {
        /// The active.
        active: String,
        /// Its term.
        term: u64,
    },
    /// This active has met a server that saw a higher term: stay active, at this term.
    RaiseTerm {
        /// The new term.
        term: u64,
    },
    /// This active has met an active of a higher term: stop serving and follow it.
    StepDown {
        /// The other active.
        active: String,
        /// Its term.
        term: u64,
    },
}

/// Decides for `me`. `election_due`: no active has been known for the election time.
/// `own_data`: `me`'s newest data was written by itself as the active (or it has none), so
/// it may elect itself when alone.
pub fn decide(
    me: View<'_>,
    peers: &[View<'_>],
    (election_due, own_data): (bool, bool),
) -> Decision {
    let peer_active = peers
        .iter()
        .filter(|p| p.status.state == State::ActiveCoordinator)
        // The highest term; between equal terms (which fencing should prevent), the lowest
        // name, so that both sides agree.
        .max_by(|a, b| {
            a.status
                .term
                .cmp(&b.status.term)
                .then_with(|| b.name.cmp(a.name))
        });
    if me.status.state == State::ActiveCoordinator {
        return match peer_active {
            Some(other)
                if other.status.term > me.status.term
                    || (other.status.term == me.status.term && other.name < me.name) =>
            {
                Decision::StepDown {
                    active: other.name.to_string(),
                    term: other.status.term,
                }
            }
            _ => match peers.iter().map(|p| p.status.term).max() {
                Some(seen) if seen > me.status.term => Decision::RaiseTerm { term: seen + 1 },
                _ => Decision::Stay,
            },
        };
    }
    if let Some(active) = peer_active
        && active.status.term >= me.status.term
    {
        let already = me.status.active.as_deref() == Some(active.name)
            && me.status.term == active.status.term
            && me.status.state != State::Starting;
        return if already {
            Decision::Stay
        } else {
            Decision::Follow {
                active: active.name.to_string(),
                term: active.status.term,
            }
        };
    }
    if !election_due || !me.status.state.may_become_active() {
        return Decision::Stay;
    }
    // (A PASSIVE-STANDBY whose active just died is alone too, and must take over: it holds
    // every acknowledged write. The rule is for a server that restarted.)
    if peers.is_empty()
        && (me.status.term > me.status.data_term
            || (!own_data && me.status.state == State::Starting))
    {
        return Decision::Stay;
    }
    // A peer still recovering may hold the newest data: wait until it can say.
    if !me.status.ready || peers.iter().any(|p| !p.status.ready) {
        return Decision::Stay;
    }
    let newest = std::iter::once(&me)
        .chain(peers.iter().filter(|p| p.status.state.may_become_active()))
        .max_by(|a, b| {
            (a.status.data_term, a.status.lsn)
                .cmp(&(b.status.data_term, b.status.lsn))
                .then_with(|| b.name.cmp(a.name))
        });
    match newest {
        Some(winner) if winner.name == me.name => {
            let seen = peers
                .iter()
                .map(|p| p.status.term)
                .chain(std::iter::once(me.status.term))
                .max()
                .unwrap_or(0);
            Decision::BecomeActive { term: seen + 1 }
        }
        _ => Decision::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: State, term: u64, data_term: u64, lsn: u64) -> Status {
        Status {
            state,
            term,
            data_term,
            lsn,
            active: None,
            ready: true,
            standbys: vec![],
        }
    }

    fn view<'a>(name: &'a str, status: &'a Status) -> View<'a> {
        View { name, status }
    }

    #[test]
    fn a_cold_start_elects_the_newest_data_then_the_lowest_name() {
        let old = status(State::Starting, 3, 3, 100);
        let new = status(State::Starting, 3, 3, 200);
        let newer_term = status(State::Starting, 4, 4, 5);
        // Not before the election time.
        assert_eq!(
            decide(view("s1", &new), &[view("s2", &old)], (false, true)),
            Decision::Stay
        );
        // More data wins, whatever the name.
        assert_eq!(
            decide(view("s2", &new), &[view("s1", &old)], (true, true)),
            Decision::BecomeActive { term: 4 }
        );
        assert_eq!(
            decide(view("s1", &old), &[view("s2", &new)], (true, true)),
            Decision::Stay
        );
        // A newer data term beats more records of an older term.
        assert_eq!(
            decide(view("s2", &newer_term), &[view("s1", &new)], (true, true)),
            Decision::BecomeActive { term: 5 }
        );
        // Equal data: the lowest name, and both sides agree.
        let same = status(State::Starting, 0, 0, 0);
        assert_eq!(
            decide(view("s1", &same), &[view("s2", &same)], (true, true)),
            Decision::BecomeActive { term: 1 }
        );
        assert_eq!(
            decide(view("s2", &same), &[view("s1", &same)], (true, true)),
            Decision::Stay
        );
        // A peer still recovering may have the newest data: no election until it is ready.
        let recovering = Status {
            ready: false,
            ..status(State::Starting, 0, 0, 0)
        };
        assert_eq!(
            decide(view("s1", &same), &[view("s2", &recovering)], (true, true)),
            Decision::Stay
        );
        // Alone after the election time: itself.
        assert_eq!(
            decide(view("s1", &same), &[], (true, true)),
            Decision::BecomeActive { term: 1 }
        );
    }

    #[test]
    fn an_active_is_followed_unless_it_is_stale() {
        let active = status(State::ActiveCoordinator, 7, 7, 10);
        let starting = status(State::Starting, 5, 5, 999);
        assert_eq!(
            decide(view("s2", &starting), &[view("s1", &active)], (false, true)),
            Decision::Follow {
                active: "s1".into(),
                term: 7
            }
        );
        // Already following it: nothing to do.
        let following = Status {
            state: State::PassiveUninitialized,
            active: Some("s1".into()),
            ..status(State::PassiveUninitialized, 7, 5, 999)
        };
        assert_eq!(
            decide(view("s2", &following), &[view("s1", &active)], (true, true)),
            Decision::Stay
        );
        // An active of a lower term than ours is stale: not followed.
        let ahead = status(State::Starting, 9, 9, 0);
        assert_eq!(
            decide(view("s2", &ahead), &[view("s1", &active)], (false, true)),
            Decision::Stay
        );
    }

    #[test]
    fn only_a_standby_takes_over_and_split_brain_goes_to_the_higher_term() {
        let uninitialized = status(State::PassiveUninitialized, 7, 0, 0);
        assert_eq!(
            decide(view("s2", &uninitialized), &[], (true, true)),
            Decision::Stay
        );
        let standby = status(State::PassiveStandby, 7, 7, 50);
        assert_eq!(
            decide(view("s2", &standby), &[], (true, false)),
            Decision::BecomeActive { term: 8 }
        );
        let old_active = status(State::ActiveCoordinator, 7, 7, 60);
        let new_active = status(State::ActiveCoordinator, 8, 8, 50);
        assert_eq!(
            decide(
                view("s1", &old_active),
                &[view("s2", &new_active)],
                (false, true)
            ),
            Decision::StepDown {
                active: "s2".into(),
                term: 8
            }
        );
        assert_eq!(
            decide(
                view("s2", &new_active),
                &[view("s1", &old_active)],
                (false, true)
            ),
            Decision::Stay
        );
        // An active meeting a starting server that saw a higher term raises its own, so that
        // the other can follow it.
        let ahead = status(State::Starting, 9, 9, 0);
        assert_eq!(
            decide(
                view("s2", &new_active),
                &[view("s1", &ahead)],
                (false, true)
            ),
            Decision::RaiseTerm { term: 10 }
        );
    }

    #[test]
    fn a_lone_server_that_followed_a_newer_active_does_not_elect_itself() {
        let former_passive = status(State::Starting, 4, 2, 100);
        assert_eq!(
            decide(view("s2", &former_passive), &[], (true, true)),
            Decision::Stay
        );
        // With a peer to compare with, data decides as usual.
        let peer = status(State::Starting, 4, 4, 50);
        assert_eq!(
            decide(
                view("s2", &former_passive),
                &[view("s1", &peer)],
                (true, true)
            ),
            Decision::Stay
        );
        assert_eq!(
            decide(
                view("s1", &peer),
                &[view("s2", &former_passive)],
                (true, true)
            ),
            Decision::BecomeActive { term: 5 }
        );
        // A server whose newest data it received as a passive waits for its peers too,
        // however current its term.
        let standby_restarted = status(State::Starting, 4, 4, 100);
        assert_eq!(
            decide(view("s2", &standby_restarted), &[], (true, false)),
            Decision::Stay
        );
        assert_eq!(
            decide(view("s2", &standby_restarted), &[], (true, true)),
            Decision::BecomeActive { term: 5 }
        );
        assert_eq!(
            decide(
                view("s2", &standby_restarted),
                &[view("s1", &peer)],
                (true, false)
            ),
            Decision::BecomeActive { term: 5 },
            "with a peer to compare with, data decides"
        );
    }
}
