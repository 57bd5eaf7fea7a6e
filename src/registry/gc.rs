//! What `module gc` may remove, decided the same way for every backend: a
//! blob no version record refers to, old enough that no push in progress
//! can be about to refer to it. Runs in the CLI process.

use std::collections::HashSet;
use std::time::Duration;

/// What `module gc` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Blobs no version record refers to, old enough to go.
    pub unreferenced: Vec<String>,
    /// Unreferenced blobs kept because they are younger than the minimum age.
    pub too_young: Vec<String>,
    /// Bytes the unreferenced blobs take.
    pub bytes: u64,
    /// Whether they were removed (false: a dry run).
    pub removed: bool,
}

/// One stored blob as `gc` sees it.
pub(crate) struct BlobEntry {
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) age: Duration,
}

/// Which blobs `gc` may remove: those no record refers to and at least
/// `min_age` old (a push in progress has its blob but not yet its record).
pub(crate) fn plan_gc(
    blobs: Vec<BlobEntry>,
    referenced: &HashSet<String>,
    min_age: Duration,
) -> GcReport {
    let mut report = GcReport::default();
    for b in blobs
        .into_iter()
        .filter(|b| !referenced.contains(&b.digest))
    {
        if b.age < min_age {
            report.too_young.push(b.digest);
        } else {
            report.bytes += b.size;
            report.unreferenced.push(b.digest);
        }
    }
    report.unreferenced.sort();
    report.too_young.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_keeps_referenced_and_young_blobs() {
        let blob = |d: &str, age: u64| BlobEntry {
            digest: d.into(),
            size: 10,
            age: Duration::from_secs(age),
        };
        let referenced: HashSet<String> = ["a".to_owned()].into();
        let report = plan_gc(
            vec![
                blob("a", 9999),
                blob("c", 9999),
                blob("b", 1),
                blob("d", 60),
            ],
            &referenced,
            Duration::from_secs(60),
        );
        assert_eq!(report.unreferenced, ["c", "d"]);
        assert_eq!(report.too_young, ["b"]);
        assert_eq!(report.bytes, 20);
        assert!(!report.removed);
    }
}
