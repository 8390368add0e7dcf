//! A collection round against [`FakeCounters`] and a resolver over a temporary directory
//! tree (a cgroup's id is its directory's inode, as in cgroup2): marks, sweeps, idle slots,
//! removal and release, failures, overflow, and continuing from a snapshot.

use std::{fs, time::Duration};

use tempfile::TempDir;

use super::{fake::FakeCounters, *};
use crate::{attribution::cgroup::cgroup_id, kernel::Continuity};

/// x86_64 numbers of the syscalls the tests count.
const READ: u16 = 0;
const WRITE: u16 = 1;

fn identity(name: &str) -> Identity {
    Identity::new("", "Cgroup", name, "")
}

fn identify(_cgroup: u64, path: Option<&str>, _session: Option<&[u8]>) -> Identity {
    path.map_or_else(Identity::unresolved, identity)
}

/// A collector over fake counters, a cgroup tree in a temporary directory, and a store.
struct Rig {
    root: TempDir,
    collector: Collector<FakeCounters>,
    store: ProfileStore,
    /// Rounds and releases so far, each folded one second after the previous.
    steps: u64,
}

impl Rig {
    fn new(capacity: u32) -> Self {
        Self::over(
            FakeCounters::new(capacity),
            tempfile::tempdir().expect("tempdir"),
        )
    }

    fn over(counters: FakeCounters, root: TempDir) -> Self {
        let resolver = Resolver::new(root.path().to_owned());
        Self {
            collector: Collector::new(counters, resolver, Arch::X86_64),
            root,
            store: ProfileStore::new(),
            steps: 0,
        }
    }

    /// Creates the cgroup directory `name`; returns its id.
    fn cgroup(&self, name: &str) -> u64 {
        let dir = self.root.path().join(name);
        fs::create_dir(&dir).expect("mkdir");
        cgroup_id(&dir).expect("stat")
    }

    /// Removes the cgroup directory `name`, as the runtime does when its container is gone.
    fn remove(&self, name: &str) {
        fs::remove_dir(self.root.path().join(name)).expect("rmdir");
    }

    fn kernel(&mut self) -> &mut FakeCounters {
        &mut self.collector.counters
    }

    fn now(&mut self) -> SystemTime {
        self.steps += 1;
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.steps)
    }

    /// One round folded, as the agent's loop runs it.
    fn round(&mut self) -> Result<RoundStats, BpfError> {
        let result = self.collector.collect(&identify);
        let now = self.now();
        self.collector.fold_into(&mut self.store, now);
        result
    }

    /// Rounds that must succeed; returns the last one's statistics.
    fn rounds(&mut self, n: u32) -> RoundStats {
        let mut stats = RoundStats::default();
        for _ in 0..n {
            stats = self.round().expect("round");
        }
        stats
    }

    /// Releases folded, as the agent's loop runs them after a save.
    fn release(&mut self) -> Result<usize, BpfError> {
        let result = self.collector.release_pending();
        let now = self.now();
        self.collector.fold_into(&mut self.store, now);
        result
    }

    /// Calls of `syscall` folded into the profile of cgroup `name`.
    fn calls(&self, name: &str, syscall: &str) -> u64 {
        calls(&self.store, name, syscall)
    }
}

fn calls(store: &ProfileStore, name: &str, syscall: &str) -> u64 {
    store
        .get(&identity(name))
        .and_then(|profile| profile.syscalls.get(syscall).copied())
        .unwrap_or(0)
}

fn stats(cgroups: usize, read: usize) -> RoundStats {
    RoundStats {
        cgroups,
        read,
        ..RoundStats::default()
    }
}

#[test]
fn first_round_reads_every_slot_and_folds_exact_deltas() {
    let mut rig = Rig::new(4);
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    rig.kernel().count(a, READ, 5);
    rig.kernel().count(a, WRITE, 2);
    rig.kernel().count(b, READ, 7);
    assert_eq!(rig.round().expect("round"), stats(2, 2));
    assert_eq!(
        (
            rig.calls("a", "read"),
            rig.calls("a", "write"),
            rig.calls("b", "read")
        ),
        (5, 2, 7)
    );
    // Deltas, not totals: the next round adds only what was counted since.
    rig.kernel().count(a, READ, 3);
    assert_eq!(rig.round().expect("round"), stats(2, 1));
    assert_eq!(
        (
            rig.calls("a", "read"),
            rig.calls("a", "write"),
            rig.calls("b", "read")
        ),
        (8, 2, 7)
    );
    assert_eq!(rig.store.len(), 2);
}

#[test]
fn unmarked_known_slot_is_not_read() {
    let mut rig = Rig::new(4);
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    let slot_a = rig.kernel().count(a, READ, 5);
    let slot_b = rig.kernel().count(b, READ, 7);
    rig.rounds(1);
    rig.kernel().count(a, READ, 1);
    // Counted without a mark: only a sweep reads it.
    rig.kernel().count_in_flight(b, READ, 4);
    assert_eq!(rig.round().expect("round"), stats(2, 1));
    assert_eq!(
        (rig.kernel().reads(slot_a), rig.kernel().reads(slot_b)),
        (2, 1)
    );
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (6, 7));
}

#[test]
fn periodic_sweep_reads_unmarked_slots() {
    let mut rig = Rig::new(4);
    let a = rig.cgroup("a");
    rig.kernel().count(a, READ, 5);
    rig.rounds(1);
    rig.kernel().count_in_flight(a, READ, 4);
    // The first round swept; the next sweep is SWEEP_ROUNDS rounds after it.
    for _ in 1..SWEEP_ROUNDS {
        assert_eq!(rig.round().expect("round").read, 0);
    }
    assert_eq!(rig.calls("a", "read"), 5);
    assert_eq!(rig.round().expect("round").read, 1);
    assert_eq!(rig.calls("a", "read"), 9);
    // A final collection sweeps on demand.
    rig.kernel().count_in_flight(a, READ, 2);
    rig.collector.sweep_next_round();
    assert_eq!(rig.round().expect("round").read, 1);
    assert_eq!(rig.calls("a", "read"), 11);
    assert_eq!(rig.round().expect("round").read, 0);
}

#[test]
fn idle_slot_is_rechecked_for_removal_on_a_schedule() {
    let mut rig = Rig::new(4);
    let a = rig.cgroup("a");
    rig.kernel().count(a, READ, 5);
    rig.rounds(1);
    // Idle for one round: checked at once (a container that just exited), still there.
    assert_eq!(rig.round().expect("round").released, 0);
    rig.remove("a");
    // Then only every IDLE_RECHECK_ROUNDS idle rounds.
    for idle_rounds in 2..IDLE_RECHECK_ROUNDS {
        assert_eq!(
            rig.round().expect("round").released,
            0,
            "idle for {idle_rounds} rounds"
        );
    }
    assert!(!rig.collector.has_pending_releases());
    assert_eq!(rig.round().expect("round").released, 1);
    assert!(rig.collector.has_pending_releases());
}

#[test]
fn removed_cgroup_is_released_only_by_release_pending() {
    // One slot: the released slot is the one the next cgroup gets.
    let mut rig = Rig::new(1);
    let a = rig.cgroup("a");
    let slot = rig.kernel().count(a, READ, 5);
    rig.rounds(1);
    rig.remove("a");
    assert_eq!(
        rig.round().expect("round"),
        RoundStats {
            cgroups: 1,
            released: 1,
            ..RoundStats::default()
        }
    );
    // Counted after the last read: release folds it.
    rig.kernel().count_in_flight(a, READ, 2);
    // Pending: rounds neither read nor release it, even a sweep, until the state is saved.
    rig.collector.sweep_next_round();
    assert_eq!(rig.round().expect("round"), stats(1, 0));
    assert_eq!(rig.kernel().slot_of(a), Some(slot));
    assert_eq!(rig.kernel().reads(slot), 1);
    assert_eq!(rig.calls("a", "read"), 5);

    assert_eq!(rig.release().expect("release"), 1);
    assert_eq!(rig.calls("a", "read"), 7);
    assert!(!rig.collector.has_pending_releases());
    assert_eq!(rig.kernel().slot_of(a), None);
    assert!(rig.kernel().is_free(slot));
    assert!(rig.collector.snapshot().slots.is_empty());
    // Forgotten: a known id would still resolve from memory, directory or not.
    rig.collector.resolver().begin_round();
    assert_eq!(rig.collector.resolver().resolve(a), None);
    assert_eq!(rig.release().expect("nothing pending"), 0);

    // The slot starts from zero for its next cgroup.
    let b = rig.cgroup("b");
    assert_eq!(rig.kernel().count(b, READ, 3), slot);
    assert_eq!(rig.round().expect("round"), stats(1, 1));
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (7, 3));
}

#[test]
fn a_cgroup_gone_before_its_first_round_is_named_by_the_kernels_path() {
    let mut rig = Rig::new(4);
    // Created, counted and removed between two rounds (or while no agent ran): the tree walk
    // cannot find it, the path the kernel kept at creation names it.
    let gone = rig.cgroup("gone");
    rig.kernel().created(gone, "gone");
    rig.kernel().count(gone, READ, 4);
    rig.remove("gone");
    let unnamed = 1_000_000_007;
    rig.kernel().count(unnamed, READ, 1);
    assert_eq!(rig.round().expect("round").unresolved, 1);
    assert_eq!(rig.calls("gone", "read"), 4);
    assert_eq!(
        rig.store
            .get(&Identity::unresolved())
            .and_then(|profile| profile.syscalls.get("read").copied()),
        Some(1)
    );
    // Idle and gone: released, which drops the kept path.
    assert_eq!(rig.round().expect("round").released, 2);
    assert!(rig.kernel().keeps_path(gone));
    assert_eq!(rig.release().expect("release"), 2);
    assert!(!rig.kernel().keeps_path(gone));
    assert_eq!(rig.calls("gone", "read"), 4);
}

#[test]
fn failed_read_skips_only_that_slot_and_the_next_round_sweeps() {
    let mut rig = Rig::new(4);
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    let slot_a = rig.kernel().count(a, READ, 5);
    rig.kernel().count(b, READ, 7);
    rig.kernel().fail_next_read(slot_a);
    assert!(rig.round().is_err());
    // What was read is folded all the same.
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (0, 7));
    // The marks the failed round took are gone: the next round reads every slot.
    rig.kernel().count_in_flight(b, READ, 3);
    assert_eq!(rig.round().expect("round"), stats(2, 2));
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (5, 10));
    assert_eq!(rig.round().expect("round"), stats(2, 0));
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (5, 10));
    // A known slot whose read fails keeps its last totals: read later, it adds only what it
    // counted since.
    rig.kernel().count(a, READ, 2);
    rig.kernel().count(b, READ, 1);
    rig.kernel().fail_next_read(slot_a);
    assert!(rig.round().is_err());
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (5, 11));
    assert_eq!(rig.round().expect("round"), stats(2, 2));
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (7, 11));
}

#[test]
fn failed_release_keeps_the_rest_pending() {
    let mut rig = Rig::new(4);
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    rig.kernel().count(a, READ, 5);
    rig.kernel().count(b, READ, 7);
    rig.rounds(1);
    rig.remove("a");
    rig.remove("b");
    assert_eq!(rig.round().expect("round").released, 2);
    rig.kernel().count_in_flight(a, READ, 1);
    rig.kernel().count_in_flight(b, READ, 1);
    rig.kernel().fail_release_after(1);
    assert!(rig.release().is_err());
    // Released in no particular order: one went, its final count folded; one waits.
    let (gone, kept) = if rig.kernel().slot_of(a).is_none() {
        (("a", 5), ("b", 7))
    } else {
        (("b", 7), ("a", 5))
    };
    assert_eq!(rig.calls(gone.0, "read"), gone.1 + 1);
    assert_eq!(rig.calls(kept.0, "read"), kept.1);
    assert!(rig.collector.has_pending_releases());
    assert_eq!(rig.release().expect("release"), 1);
    assert_eq!(rig.calls(kept.0, "read"), kept.1 + 1);
    assert_eq!(
        (rig.kernel().slot_of(a), rig.kernel().slot_of(b)),
        (None, None)
    );
    assert!(!rig.collector.has_pending_releases());
}

#[test]
fn overflow_counts_become_lost_calls() {
    let mut rig = Rig::new(1);
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    rig.kernel().count(a, READ, 2);
    assert_eq!(rig.kernel().count(b, READ, 5), OVERFLOW_SLOT);
    rig.kernel().count(b, WRITE, 1);
    let round = rig.round().expect("round");
    assert_eq!((round.cgroups, round.lost_calls), (1, 6));
    rig.kernel().count(b, READ, 3);
    assert_eq!(rig.round().expect("round").lost_calls, 3);
    assert_eq!(rig.round().expect("round").lost_calls, 0);
    assert_eq!(rig.collector.lost_total(), 9);
    assert_eq!((rig.calls("a", "read"), rig.calls("b", "read")), (2, 0));
}

/// Counters as a previous agent left them: `a` counted 5 reads and 2 writes, one call of
/// `b` overflowed, and the snapshot saved with them.
fn previous_agent(counts_map_id: u32) -> (FakeCounters, TempDir, KernelSnapshot) {
    let mut counters = FakeCounters::new(1);
    counters.set_continuity(Continuity {
        counts_map_id,
        ..Continuity::default()
    });
    let mut rig = Rig::over(counters, tempfile::tempdir().expect("tempdir"));
    let (a, b) = (rig.cgroup("a"), rig.cgroup("b"));
    rig.kernel().count(a, READ, 5);
    rig.kernel().count(a, WRITE, 2);
    rig.kernel().count(b, READ, 1);
    rig.rounds(1);
    let snapshot = rig.collector.snapshot();
    (rig.collector.counters, rig.root, snapshot)
}

/// The next agent over `counters`, which counted on while no agent ran.
fn next_agent(mut counters: FakeCounters, root: TempDir, continuity: Continuity) -> Rig {
    counters.set_continuity(continuity);
    let mut rig = Rig::over(counters, root);
    let a = cgroup_id(&rig.root.path().join("a")).expect("stat");
    let b = cgroup_id(&rig.root.path().join("b")).expect("stat");
    rig.kernel().count(a, READ, 3);
    rig.kernel().count(b, READ, 4);
    rig
}

#[test]
fn restore_continues_without_double_counting() {
    let (counters, root, snapshot) = previous_agent(7);
    let mut rig = next_agent(
        counters,
        root,
        Continuity {
            reused_maps: true,
            counts_map_id: 7,
            ..Continuity::default()
        },
    );
    assert!(rig.collector.restore(&snapshot));
    let round = rig.round().expect("round");
    // Only what was counted since the snapshot.
    assert_eq!((rig.calls("a", "read"), rig.calls("a", "write")), (3, 0));
    assert_eq!((round.read, round.lost_calls), (1, 4));
}

#[test]
fn restore_keeps_the_identity_of_a_cgroup_removed_meanwhile() {
    let (counters, root, snapshot) = previous_agent(7);
    let mut rig = next_agent(
        counters,
        root,
        Continuity {
            reused_maps: true,
            counts_map_id: 7,
            ..Continuity::default()
        },
    );
    rig.remove("a");
    assert!(rig.collector.restore(&snapshot));
    let round = rig.round().expect("round");
    assert_eq!(round.unresolved, 1);
    assert_eq!(rig.calls("a", "read"), 3);
    assert!(rig.store.get(&Identity::unresolved()).is_none());
}

#[test]
fn restore_is_refused_for_other_counters() {
    for continuity in [
        // Another counters map.
        Continuity {
            reused_maps: true,
            counts_map_id: 8,
            ..Continuity::default()
        },
        // Fresh counters that happen to have the same map id.
        Continuity {
            reused_maps: false,
            counts_map_id: 7,
            ..Continuity::default()
        },
    ] {
        let (counters, root, snapshot) = previous_agent(7);
        let mut rig = next_agent(counters, root, continuity);
        assert!(!rig.collector.restore(&snapshot), "{continuity:?}");
        // Without baselines the totals count as new (the run warns about it).
        let round = rig.round().expect("round");
        assert_eq!((rig.calls("a", "read"), rig.calls("a", "write")), (8, 2));
        assert_eq!(round.lost_calls, 5);
    }
}

#[test]
fn snapshot_round_trips() {
    let (counters, root, snapshot) = previous_agent(7);
    let a = cgroup_id(&root.path().join("a")).expect("stat");
    assert_eq!(
        snapshot,
        KernelSnapshot {
            counts_map_id: 7,
            slots: vec![SavedSlot {
                slot: recorder_ebpf::FIRST_CGROUP_SLOT,
                cgroup: a,
                kind: 0,
                session: 0,
                identity: Some(identity("a")),
                totals: BTreeMap::from([(READ, 5), (WRITE, 2)]),
            }],
            overflow: BTreeMap::from([(READ, 1)]),
        }
    );
    let json = serde_json::to_string(&snapshot).expect("serialize");
    let parsed: KernelSnapshot = serde_json::from_str(&json).expect("parse");
    assert_eq!(parsed, snapshot);
    let mut rig = Rig::over(counters, root);
    rig.kernel().set_continuity(Continuity {
        reused_maps: true,
        counts_map_id: 7,
        ..Continuity::default()
    });
    assert!(rig.collector.restore(&parsed));
    assert_eq!(rig.collector.snapshot(), snapshot);
}

#[test]
fn unfolded_rounds_and_releases_keep_their_counts() {
    let mut rig = Rig::new(4);
    let a = rig.cgroup("a");
    rig.kernel().count(a, READ, 5);
    rig.collector.collect(&identify).expect("round");
    rig.kernel().count(a, READ, 3);
    rig.collector.collect(&identify).expect("round");
    rig.remove("a");
    rig.kernel().count_in_flight(a, READ, 2);
    assert_eq!(rig.collector.collect(&identify).expect("round").released, 1);
    assert_eq!(rig.collector.release_pending().expect("release"), 1);
    assert_eq!(rig.calls("a", "read"), 0);
    rig.collector
        .fold_into(&mut rig.store, SystemTime::UNIX_EPOCH);
    assert_eq!(rig.calls("a", "read"), 10);
}

#[test]
fn sparse_deltas_match_dense_ones() {
    let mut before: Totals = Box::new([0; SYSCALL_COLUMNS]);
    before[0] = 5;
    before[3] = 9;
    before[7] = 4;
    before[511] = 1;
    let mut now = before.clone();
    now[0] = 5; // idle column
    now[3] = 2; // reset: counts from zero
    now[7] = 10;
    now[100] = 6; // new column
    now[511] = 0; // reset to zero
    let before_sparse: Sparse = before
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(nr, c)| (nr as u16, *c))
        .collect();
    let (mut delta, mut totals) = (Vec::new(), Vec::new());
    sparse_deltas(&now, &before_sparse, &mut delta, &mut totals);
    assert_eq!(delta, vec![(3, 2), (7, 6), (100, 6)]);
    assert_eq!(totals, vec![(0, 5), (3, 2), (7, 10), (100, 6)]);
    let dense = deltas(&now, Some(&before));
    let from_dense: Sparse = dense
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(nr, c)| (nr as u16, *c))
        .collect();
    assert_eq!(delta, from_dense);
    // First read: everything is new.
    sparse_deltas(&now, &[], &mut delta, &mut totals);
    assert_eq!(delta, totals);
}

/// The dense reference the sparse form must agree with.
fn deltas(now: &Totals, before: Option<&Totals>) -> Totals {
    let mut out: Totals = Box::new([0; SYSCALL_COLUMNS]);
    for (i, slot) in out.iter_mut().enumerate() {
        let previous = before.map_or(0, |b| b[i]);
        *slot = if now[i] >= previous {
            now[i] - previous
        } else {
            now[i]
        };
    }
    out
}

#[test]
fn deltas_handle_first_read_and_reset() {
    let mut a: Totals = Box::new([0; SYSCALL_COLUMNS]);
    a[0] = 5;
    a[1] = 2;
    let (mut delta, mut totals) = (Vec::new(), Vec::new());
    sparse_deltas(&a, &[], &mut delta, &mut totals);
    assert_eq!(delta.first(), Some(&(0, 5)));
    let mut b = a.clone();
    b[0] = 7;
    b[1] = 1; // reset: counts from zero
    let before = totals.clone();
    sparse_deltas(&b, &before, &mut delta, &mut totals);
    assert_eq!(delta, vec![(0, 2), (1, 1)]);
}

#[test]
fn compat_slots_fold_into_the_compat_numbers() {
    let key = |kind| recorder_ebpf::SlotKey {
        cgroup: 7,
        session: 0,
        kind,
        _pad: 0,
    };
    let delta = vec![(3, 2), (199, 1)];
    assert_eq!(super::numbered(key(0), delta.clone()), delta);
    assert_eq!(
        super::numbered(key(recorder_ebpf::KIND_EXEC), delta.clone()),
        delta
    );
    let compat = super::numbered(key(recorder_ebpf::KIND_COMPAT), delta);
    assert_eq!(compat, [(515, 2), (711, 1)]);
    let mut store = ProfileStore::default();
    store.add_sparse(
        &identity("ia32"),
        Arch::X86_64,
        &compat,
        SystemTime::UNIX_EPOCH,
    );
    assert_eq!(calls(&store, "ia32", "x86:read"), 2);
    assert_eq!(calls(&store, "ia32", "x86:getuid32"), 1);
    assert_eq!(calls(&store, "ia32", "close"), 0);
}
