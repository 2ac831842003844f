//! Retention as a pure function: `plan(backups, policy, now)` → keep or delete, with reasons.
//!
//! Semantics follow restic's `forget`: `keep_last` keeps the newest N; `keep_daily/weekly/monthly`
//! keep the newest backup in each of the last N UTC days / ISO weeks / months that have backups;
//! `keep_within` keeps everything newer than `now - d`. A backup kept by any rule is kept. Two
//! safety rules sit on top: the newest complete backup is never deleted, and an empty policy deletes
//! nothing. Incomplete backups (no manifest) are deleted once older than the grace period — they
//! are leftovers of interrupted runs, invisible to list and restore.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Env;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_within: Option<Duration>,
    pub incomplete_grace: Duration,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_within.is_none()
    }

    pub fn from_env(env: &Env) -> Result<Self> {
        let count = |name: &str| -> Result<Option<u32>> {
            match env.get(name) {
                None => Ok(None),
                Some(_) => {
                    let n = env.u64(name, 0)?;
                    u32::try_from(n)
                        .map(Some)
                        .map_err(|_| Error::Config(format!("{name}: {n} is too large")))
                }
            }
        };
        Ok(Policy {
            keep_last: count("LIFEBOAT_KEEP_LAST")?,
            keep_daily: count("LIFEBOAT_KEEP_DAILY")?,
            keep_weekly: count("LIFEBOAT_KEEP_WEEKLY")?,
            keep_monthly: count("LIFEBOAT_KEEP_MONTHLY")?,
            keep_within: match env.get("LIFEBOAT_KEEP_WITHIN") {
                None => None,
                Some(_) => Some(env.duration("LIFEBOAT_KEEP_WITHIN", "0s")?),
            },
            incomplete_grace: env.duration("LIFEBOAT_INCOMPLETE_GRACE", "24h")?,
        })
    }
}

/// One backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created: SystemTime,
    /// Has a manifest (complete) or not (an interrupted run's leftovers).
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

fn days(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
    }
}

/// (year, month) of a day number (days since 1970-01-01), proleptic Gregorian.
fn year_month(z: i64) -> (i64, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Monday-based week number since the epoch (1970-01-01 was a Thursday): one value per ISO week.
fn week(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// Decide for every candidate. Output is newest first.
pub fn plan(candidates: &[Candidate], policy: &Policy, now: SystemTime) -> Vec<Decision> {
    let mut complete: Vec<&Candidate> = candidates.iter().filter(|c| c.complete).collect();
    complete.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
    let mut out = Vec::new();
    let bucket_rule = |name: &str,
                       n: Option<u32>,
                       key: &dyn Fn(SystemTime) -> i64,
                       reasons: &mut Vec<Vec<String>>| {
        let Some(n) = n else { return };
        let mut seen = BTreeSet::new();
        for (i, c) in complete.iter().enumerate() {
            let k = key(c.created);
            if seen.len() as u32 >= n && !seen.contains(&k) {
                break;
            }
            if seen.insert(k) {
                reasons[i].push(format!("{name} {}/{n}", seen.len()));
            }
        }
    };
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); complete.len()];
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push(format!("last {n}"));
        }
    }
    bucket_rule("daily", policy.keep_daily, &days, &mut reasons);
    bucket_rule(
        "weekly",
        policy.keep_weekly,
        &|t| week(days(t)),
        &mut reasons,
    );
    bucket_rule(
        "monthly",
        policy.keep_monthly,
        &|t| {
            let (y, m) = year_month(days(t));
            y * 12 + i64::from(m)
        },
        &mut reasons,
    );
    if let Some(d) = policy.keep_within {
        let cutoff = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
        for (i, c) in complete.iter().enumerate() {
            if c.created >= cutoff {
                reasons[i].push(format!("within {}", humantime::format_duration(d)));
            }
        }
    }
    for (i, c) in complete.iter().enumerate() {
        let mut r = std::mem::take(&mut reasons[i]);
        if i == 0 {
            r.insert(0, "newest complete backup (never deleted)".into());
        }
        if policy.is_empty() {
            r.push("no retention policy set".into());
        }
        let keep = !r.is_empty();
        if !keep {
            r.push("matched no keep rule".into());
        }
        out.push(Decision {
            id: c.id.clone(),
            keep,
            reasons: r,
        });
    }
    let mut incomplete: Vec<&Candidate> = candidates.iter().filter(|c| !c.complete).collect();
    incomplete.sort_by_key(|c| std::cmp::Reverse(c.created));
    for c in incomplete {
        let age = now.duration_since(c.created).unwrap_or_default();
        let (keep, why) = if age > policy.incomplete_grace {
            (
                false,
                format!(
                    "incomplete (no manifest) and older than the {} grace period",
                    humantime::format_duration(policy.incomplete_grace)
                ),
            )
        } else {
            (
                true,
                "incomplete but recent (may still be in progress)".to_string(),
            )
        };
        out.push(Decision {
            id: c.id.clone(),
            keep,
            reasons: vec![why],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn c(id: &str, created: &str) -> Candidate {
        Candidate {
            id: id.into(),
            created: t(created),
            complete: true,
        }
    }

    fn kept(candidates: &[Candidate], policy: &Policy, now: &str) -> Vec<String> {
        let mut k: Vec<String> = plan(candidates, policy, t(now))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    /// Two backups a day (00:30 and 12:30) for 70 days ending 2026-11-22.
    fn twice_daily() -> Vec<Candidate> {
        let end = t("2026-11-22T12:30:00Z");
        (0..140)
            .map(|i| {
                let at = end - Duration::from_secs(i * 43_200);
                Candidate {
                    id: format!("b{i:03}"),
                    created: at,
                    complete: true,
                }
            })
            .collect()
    }

    #[test]
    fn calendar_helpers() {
        assert_eq!(year_month(days(t("2026-11-22T00:00:00Z"))), (2026, 11));
        assert_eq!(year_month(days(t("2024-02-29T23:59:59Z"))), (2024, 2));
        assert_eq!(year_month(days(t("2000-03-01T00:00:00Z"))), (2000, 3));
        // 2026-11-22 is a Sunday, 2026-11-23 a Monday: different ISO weeks.
        assert_eq!(
            week(days(t("2026-11-16T00:00:00Z"))),
            week(days(t("2026-11-22T23:00:00Z")))
        );
        assert_ne!(
            week(days(t("2026-11-22T23:00:00Z"))),
            week(days(t("2026-11-23T00:00:00Z")))
        );
    }

    #[test]
    fn table() {
        let now = "2026-11-22T13:00:00Z";
        let all = twice_daily();
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy {
                incomplete_grace: Duration::from_secs(86_400),
                ..Policy::default()
            };
            f(&mut p);
            p
        };
        let ids = |v: &[usize]| -> Vec<String> { v.iter().map(|i| format!("b{i:03}")).collect() };
        let cases: Vec<(&str, Policy, Vec<Candidate>, Vec<String>)> = vec![
            (
                "empty policy keeps all",
                p(|_| {}),
                all[..5].to_vec(),
                ids(&[0, 1, 2, 3, 4]),
            ),
            (
                "last 1",
                p(|p| p.keep_last = Some(1)),
                all.clone(),
                ids(&[0]),
            ),
            (
                "last 3",
                p(|p| p.keep_last = Some(3)),
                all.clone(),
                ids(&[0, 1, 2]),
            ),
            (
                "last 0 still keeps newest",
                p(|p| p.keep_last = Some(0)),
                all.clone(),
                ids(&[0]),
            ),
            (
                "last more than exist",
                p(|p| p.keep_last = Some(500)),
                all[..4].to_vec(),
                ids(&[0, 1, 2, 3]),
            ),
            (
                "daily 3 = newest per day",
                p(|p| p.keep_daily = Some(3)),
                all.clone(),
                ids(&[0, 2, 4]),
            ),
            (
                "daily 1",
                p(|p| p.keep_daily = Some(1)),
                all.clone(),
                ids(&[0]),
            ),
            // Weeks end on Sunday 11-22 12:30 (b000); previous Sunday 11-15 12:30 = b014; 11-08 = b028.
            (
                "weekly 3",
                p(|p| p.keep_weekly = Some(3)),
                all.clone(),
                ids(&[0, 14, 28]),
            ),
            // Months: Nov (b000), Oct 31 12:30 = b044, Sep 30 12:30 = b106.
            (
                "monthly 3",
                p(|p| p.keep_monthly = Some(3)),
                all.clone(),
                ids(&[0, 44, 106]),
            ),
            (
                "within 36h",
                p(|p| p.keep_within = Some(Duration::from_secs(36 * 3600))),
                all.clone(),
                ids(&[0, 1, 2]),
            ),
            (
                "within 0 keeps newest only",
                p(|p| p.keep_within = Some(Duration::ZERO)),
                all.clone(),
                ids(&[0]),
            ),
            (
                "last 2 + daily 3 union",
                p(|p| {
                    p.keep_last = Some(2);
                    p.keep_daily = Some(3)
                }),
                all.clone(),
                ids(&[0, 1, 2, 4]),
            ),
            (
                "daily 2 + weekly 2",
                p(|p| {
                    p.keep_daily = Some(2);
                    p.keep_weekly = Some(2)
                }),
                all.clone(),
                ids(&[0, 2, 14]),
            ),
            (
                "gap days: daily counts days that have backups",
                p(|p| p.keep_daily = Some(2)),
                vec![
                    c("a", "2026-11-22T01:00:00Z"),
                    c("b", "2026-11-10T01:00:00Z"),
                    c("c", "2026-11-01T01:00:00Z"),
                ],
                vec!["a".into(), "b".into()],
            ),
            (
                "same day keeps the newest of the day",
                p(|p| p.keep_daily = Some(1)),
                vec![
                    c("early", "2026-11-22T01:00:00Z"),
                    c("late", "2026-11-22T23:00:00Z"),
                ],
                vec!["late".into()],
            ),
            ("no backups", p(|p| p.keep_last = Some(1)), vec![], vec![]),
        ];
        assert!(cases.len() >= 15);
        for (name, policy, input, mut want) in cases {
            want.sort();
            assert_eq!(kept(&input, &policy, now), want, "case {name:?}");
        }
    }

    #[test]
    fn incomplete_backups_and_reasons() {
        let now = t("2026-11-22T13:00:00Z");
        let cands = vec![
            c("good", "2026-11-22T12:00:00Z"),
            Candidate {
                id: "stale".into(),
                created: t("2026-11-20T00:00:00Z"),
                complete: false,
            },
            Candidate {
                id: "running".into(),
                created: t("2026-11-22T12:59:00Z"),
                complete: false,
            },
        ];
        let policy = Policy {
            keep_last: Some(1),
            incomplete_grace: Duration::from_secs(3600),
            ..Policy::default()
        };
        let d = plan(&cands, &policy, now);
        let get = |id: &str| d.iter().find(|x| x.id == id).unwrap().clone();
        assert!(get("good").keep);
        assert!(get("good").reasons.iter().any(|r| r.contains("newest")));
        assert!(!get("stale").keep && get("stale").reasons[0].contains("grace"));
        assert!(get("running").keep);
        // The newest complete backup survives even when every rule would drop it.
        let policy = Policy {
            keep_within: Some(Duration::from_secs(1)),
            ..Policy::default()
        };
        assert!(plan(&[c("old", "2020-01-01T00:00:00Z")], &policy, now)[0].keep);
    }

    #[test]
    fn policy_from_env() {
        let env = Env::from_pairs([("LIFEBOAT_KEEP_LAST", "7"), ("LIFEBOAT_KEEP_WITHIN", "2d")]);
        let p = Policy::from_env(&env).unwrap();
        assert_eq!(p.keep_last, Some(7));
        assert_eq!(p.keep_within, Some(Duration::from_secs(172_800)));
        assert!(Policy::from_env(&Env::from_pairs([("LIFEBOAT_KEEP_DAILY", "x")])).is_err());
        assert!(Policy::from_env(&Env::default()).unwrap().is_empty());
    }
}
