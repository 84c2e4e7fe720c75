//! Quorum: every requirement met by distinct people.
//!
//! `require: [{lead, 1}, {director, 1}]` needs two different humans even if
//! one of them holds both roles: each person fills at most one slot. That is
//! a small bipartite matching, solved by augmenting paths.

use crate::policy::decision::Requirement;

/// Whether `approvers` (each with their roles) can fill every slot of
/// `requirements` with a different person.
pub fn met(requirements: &[Requirement], approvers: &[Vec<String>]) -> bool {
    let slots: Vec<&str> = requirements
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.role.as_str(), r.count as usize))
        .collect();
    if slots.len() > approvers.len() {
        return false;
    }
    // owner[p] = slot filled by person p.
    let mut slot_of_person: Vec<Option<usize>> = vec![None; approvers.len()];
    for slot in 0..slots.len() {
        let mut seen = vec![false; approvers.len()];
        if !augment(slot, &slots, approvers, &mut slot_of_person, &mut seen) {
            return false;
        }
    }
    true
}

fn augment(
    slot: usize,
    slots: &[&str],
    approvers: &[Vec<String>],
    slot_of_person: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for (p, roles) in approvers.iter().enumerate() {
        if seen[p] || !roles.iter().any(|r| r == slots[slot]) {
            continue;
        }
        seen[p] = true;
        let free = match slot_of_person[p] {
            None => true,
            Some(other) => augment(other, slots, approvers, slot_of_person, seen),
        };
        if free {
            slot_of_person[p] = Some(slot);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, u32)]) -> Vec<Requirement> {
        pairs
            .iter()
            .map(|(role, count)| Requirement {
                role: role.to_string(),
                count: *count,
            })
            .collect()
    }

    fn people(roles: &[&[&str]]) -> Vec<Vec<String>> {
        roles
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn one_person_counts_once() {
        let r = req(&[("lead", 1), ("director", 1)]);
        assert!(!met(&r, &people(&[&["lead", "director"]])));
        assert!(met(&r, &people(&[&["lead", "director"], &["director"]])));
        assert!(met(&r, &people(&[&["lead"], &["director"]])));
        assert!(!met(&r, &people(&[&["lead"], &["lead"]])));
    }

    #[test]
    fn counts_and_rearrangement() {
        let r = req(&[("lead", 2)]);
        assert!(!met(&r, &people(&[&["lead"]])));
        assert!(met(&r, &people(&[&["lead"], &["lead", "x"]])));
        // The first person must move to `director` for the second to fit `lead`.
        let r = req(&[("lead", 1), ("director", 1)]);
        assert!(met(&r, &people(&[&["lead", "director"], &["lead"]])));
        assert!(met(&[], &[]));
    }
}
