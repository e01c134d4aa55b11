//! Unit tests of the policy file format: parsing, checks, merge, and
//! where errors point.

use super::*;
use crate::limits::ResourceLimits;
use crate::policy::{PolicyChanges, PolicySummary};

fn fp(name: &str) -> String {
    Identity::from_spki_der(name.as_bytes()).to_string()
}

fn id(name: &str) -> Identity {
    Identity::from_spki_der(name.as_bytes())
}

fn parsed(text: &str) -> Policy {
    parse(text, Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn rejected(text: &str) -> PolicyError {
    match parse(text, Path::new("policy.toml")) {
        Ok(p) => panic!("accepted: {p:?}\n{text}"),
        Err(e) => e,
    }
}

/// Line, column, key and kind of an error, for one assert.
fn at(e: &PolicyError) -> (Option<usize>, Option<usize>, Option<&str>, &PolicyErrorKind) {
    (e.line, e.column, e.key.as_deref(), &e.kind)
}

/// The column just after `prefix`, e.g. of a value after a fingerprint.
fn after(prefix: &str) -> usize {
    prefix.chars().count() + 1
}

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

fn per_second(count: u32, burst: u32) -> Option<Rate> {
    Some(Rate {
        count: n(count),
        period: SECOND,
        burst: n(burst),
    })
}

fn per_minute(count: u32, burst: u32) -> Option<Rate> {
    Some(Rate {
        count: n(count),
        period: MINUTE,
        burst: n(burst),
    })
}

fn unknown(expected: &str) -> PolicyErrorKind {
    PolicyErrorKind::UnknownKey {
        expected: expected.to_owned(),
    }
}

fn out_of_range(value: &str, expected: &str) -> PolicyErrorKind {
    PolicyErrorKind::OutOfRange {
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

const TOP_KEYS: &str = "denylist, admins, rate, quota, limits, handshakes, identity_limits, keep_jobs_when_banned, users";
const USER_KEYS: &str = "rate, quota, limits, identity_limits, allow_listen, allow_user_namespaces";
const RATE_KEYS: &str = "requests_per_second, request_burst, starts_per_minute, start_burst";

// The documented example parses, and means what its comments say.
#[test]
fn the_example_file_parses() {
    let p = parsed(include_str!("../../../policy.example.toml"));
    let bad = format!("sha256:{:0>64}", "bad");
    let admin = format!("sha256:{:0>64}", "ad111");
    let robot = format!("sha256:{:0>64}", "c1c1");
    assert!(p.is_denied(&bad.parse().unwrap()));
    assert!(p.is_admin(&admin.parse().unwrap()));
    assert_eq!(
        p.summary(),
        PolicySummary {
            denied: 1,
            admins: 1,
            users: 1
        }
    );
    let top = Rules {
        requests: per_second(20, 40),
        starts: per_minute(30, 5),
        jobs: JobQuota {
            max_running_jobs: Some(16),
            max_output_bytes: Override::Limit(1 << 30),
            ceilings: CeilingOverrides {
                memory_bytes: Override::Limit(1 << 30),
                cpu_millis: Override::Limit(1500),
                pids: Override::Limit(512),
                io_read_bps: Override::Limit(100 << 20),
                io_write_bps: Override::Limit(100 << 20),
            },
            identity_limits: CeilingOverrides {
                memory_bytes: Override::Limit(4 << 30),
                cpu_millis: Override::Limit(2000),
                pids: Override::Limit(2048),
                ..CeilingOverrides::default()
            },
            permits: JobPermits::default(),
        },
    };
    assert_eq!(p.rules(&id("anyone")), &top);
    assert_eq!(
        p.rules(&robot.parse().unwrap()),
        &Rules {
            requests: per_second(20, 40),
            // Its own rate, so not the top-level start_burst of 5.
            starts: per_minute(120, 120),
            jobs: JobQuota {
                max_running_jobs: Some(100),
                max_output_bytes: Override::Unlimited,
                ceilings: CeilingOverrides {
                    memory_bytes: Override::Limit(8 << 30),
                    cpu_millis: Override::Limit(4000),
                    ..top.jobs.ceilings
                },
                // Its own memory, "unlimited" cpus, the top level's pids.
                identity_limits: CeilingOverrides {
                    memory_bytes: Override::Limit(16 << 30),
                    cpu_millis: Override::Unlimited,
                    ..top.jobs.identity_limits
                },
                permits: JobPermits {
                    listen: true,
                    user_namespaces: false,
                },
            },
        }
    );
    assert_eq!(p.handshakes(), per_second(20, 50));
    assert_eq!(p.source(), Some(Path::new("policy.toml")));
}

// A file with nothing in it restricts nothing (and is not an error).
#[test]
fn an_empty_file_restricts_nothing() {
    for text in ["", "# only a comment\n", "\n\n"] {
        assert_eq!(
            parsed(text),
            Policy {
                source: Some("policy.toml".into()),
                ..Policy::default()
            }
        );
    }
}

// Every key at once: exact rules, defaults for bursts, users merged
// field by field over the top level.
#[test]
fn a_full_policy_maps_to_exact_rules() {
    let (alice, bob, carol, mallory) = (fp("alice"), fp("bob"), fp("carol"), fp("mallory"));
    let text = format!(
        r#"
denylist = ["{mallory}"]
admins = ["{carol}"]

[rate]
requests_per_second = 10
starts_per_minute = 6
start_burst = 2

[quota]
max_running_jobs = 4
max_output_bytes = 1048576

[limits]
memory = "256M"
cpus = 0.5
pids = 64
io_write = "unlimited"

[handshakes]
per_second = 5

[users."{alice}".rate]
request_burst = 100
starts_per_minute = "unlimited"

[users."{alice}".quota]
max_running_jobs = 0

[users."{alice}".limits]
cpus = 2
io_read = "10M"

[users."{bob}"]
rate = {{ requests_per_second = 1 }}
"#
    );
    let p = parsed(&text);
    assert!(p.is_denied(&id("mallory")) && !p.is_admin(&id("mallory")));
    assert!(p.is_admin(&id("carol")) && !p.is_denied(&id("carol")));
    assert!(!p.is_admin(&id("alice")) && !p.is_denied(&id("alice")));
    let top = Rules {
        requests: per_second(10, 10),
        starts: per_minute(6, 2),
        jobs: JobQuota {
            max_running_jobs: Some(4),
            max_output_bytes: Override::Limit(1 << 20),
            ceilings: CeilingOverrides {
                memory_bytes: Override::Limit(256 << 20),
                cpu_millis: Override::Limit(500),
                pids: Override::Limit(64),
                io_read_bps: Override::Inherit,
                io_write_bps: Override::Unlimited,
            },
            identity_limits: CeilingOverrides::default(),
            permits: JobPermits::default(),
        },
    };
    assert_eq!(p.rules(&id("carol")), &top);
    assert_eq!(
        p.rules(&id("alice")),
        &Rules {
            requests: per_second(10, 100),
            starts: None,
            jobs: JobQuota {
                max_running_jobs: Some(0),
                max_output_bytes: Override::Limit(1 << 20),
                ceilings: CeilingOverrides {
                    cpu_millis: Override::Limit(2000),
                    io_read_bps: Override::Limit(10 << 20),
                    ..top.jobs.ceilings
                },
                identity_limits: top.jobs.identity_limits,
                permits: JobPermits::default(),
            },
        }
    );
    // Bob's own rate with the top-level burst (none: his own count).
    assert_eq!(
        p.rules(&id("bob")),
        &Rules {
            requests: per_second(1, 1),
            ..top
        }
    );
    assert_eq!(p.handshakes(), per_second(5, 5));
    assert_eq!(
        p.summary(),
        PolicySummary {
            denied: 1,
            admins: 1,
            users: 2
        }
    );
}

// The review's trap: a user throttled to 1 request per second must not
// inherit the 1000-request burst sized for the top-level rate of 100.
#[test]
fn a_users_own_rate_does_not_take_the_top_level_burst() {
    let alice = fp("alice");
    let p = parsed(&format!(
        "[rate]\nrequests_per_second = 100\nrequest_burst = 1000\n\
         starts_per_minute = 60\nstart_burst = 600\n\
         [users.\"{alice}\".rate]\nrequests_per_second = 1\nstarts_per_minute = 2\n"
    ));
    assert_eq!(p.rules(&id("alice")).requests, per_second(1, 1));
    assert_eq!(p.rules(&id("alice")).starts, per_minute(2, 2));
    assert_eq!(p.rules(&id("bob")).requests, per_second(100, 1000));
    assert_eq!(p.rules(&id("bob")).starts, per_minute(60, 600));
}

// A user who sets only a burst keeps the top-level rate with their
// burst; one who sets neither inherits both; one who sets both gets both.
#[test]
fn a_users_burst_and_rate_are_inherited_field_by_field() {
    let (alice, bob, carol) = (fp("alice"), fp("bob"), fp("carol"));
    let p = parsed(&format!(
        "[rate]\nrequests_per_second = 100\nrequest_burst = 1000\nstarts_per_minute = 6\n\
         [users.\"{alice}\".rate]\nrequest_burst = 5\nstart_burst = 3\n\
         [users.\"{bob}\".quota]\nmax_running_jobs = 1\n\
         [users.\"{carol}\".rate]\nrequests_per_second = 7\nrequest_burst = 70\n"
    ));
    let alice = p.rules(&id("alice"));
    assert_eq!(alice.requests, per_second(100, 5));
    assert_eq!(alice.starts, per_minute(6, 3));
    let bob = p.rules(&id("bob"));
    assert_eq!(bob.requests, per_second(100, 1000));
    // No top-level start_burst: the rate in effect.
    assert_eq!(bob.starts, per_minute(6, 6));
    let carol = p.rules(&id("carol"));
    assert_eq!(carol.requests, per_second(7, 70));
    assert_eq!(carol.starts, per_minute(6, 6));
}

// "unlimited" in one user's table lifts the top-level limits for that
// user only.
#[test]
fn unlimited_in_a_user_lifts_a_top_level_limit_for_that_user_only() {
    let alice = fp("alice");
    let p = parsed(&format!(
        r#"
[rate]
requests_per_second = 10
request_burst = 20
[quota]
max_running_jobs = 2
max_output_bytes = "1M"
[limits]
memory = "1G"
[users."{alice}".rate]
requests_per_second = "unlimited"
[users."{alice}".quota]
max_running_jobs = "unlimited"
max_output_bytes = "unlimited"
[users."{alice}".limits]
memory = "unlimited"
"#
    ));
    let alice = p.rules(&id("alice"));
    assert_eq!(alice.requests, None);
    assert_eq!(alice.jobs.max_running_jobs, None);
    assert_eq!(alice.jobs.max_output_bytes, Override::Unlimited);
    assert_eq!(alice.jobs.ceilings.memory_bytes, Override::Unlimited);
    let bob = p.rules(&id("bob"));
    assert_eq!(bob.requests, per_second(10, 20));
    assert_eq!(bob.jobs.max_running_jobs, Some(2));
    assert_eq!(bob.jobs.max_output_bytes, Override::Limit(1 << 20));
    assert_eq!(bob.jobs.ceilings.memory_bytes, Override::Limit(1 << 30));
}

// C27: a misspelled top-level key is an error, not "no denylist".
#[test]
fn a_misspelled_key_is_refused() {
    let e = rejected(&format!("denylst = [\"{}\"]\n", fp("mallory")));
    assert_eq!(
        at(&e),
        (Some(1), Some(1), Some("denylst"), &unknown(TOP_KEYS))
    );
    assert_eq!(
        e.to_string(),
        "policy.toml:1:1: key 'denylst': unknown key; expected one of: \
         denylist, admins, rate, quota, limits, handshakes, identity_limits, keep_jobs_when_banned, users"
    );
}

// C27: the denylist written under [rate] is not a denylist.
#[test]
fn a_known_key_in_the_wrong_table_is_refused() {
    let e = rejected(&format!("[rate]\ndenylist = [\"{}\"]\n", fp("mallory")));
    assert_eq!(
        at(&e),
        (Some(2), Some(1), Some("rate.denylist"), &unknown(RATE_KEYS))
    );
    let e = rejected("[quota]\nmemory = \"1G\"\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(1),
            Some("quota.memory"),
            &unknown("max_running_jobs, max_output_bytes")
        )
    );
    let e = rejected("[limits]\nmax_pids = 5\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(1),
            Some("limits.max_pids"),
            &unknown("memory, cpus, pids, io_read, io_write")
        )
    );
    let e = rejected("[handshakes]\nrequests_per_second = 5\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(1),
            Some("handshakes.requests_per_second"),
            &unknown("per_second, burst")
        )
    );
    // A dotted key names the same place.
    let e = rejected("rate.request = 5\n");
    assert_eq!(
        at(&e),
        (Some(1), Some(6), Some("rate.request"), &unknown(RATE_KEYS))
    );
}

// A [users."…"] table may hold only rate, quota and limits: not the
// denylist, admins or handshakes, nor a typo.
#[test]
fn an_unknown_key_in_a_user_table_is_refused() {
    let alice = fp("alice");
    let e = rejected(&format!("[users.\"{alice}\"]\nadmins = []\n"));
    let key = format!("users.\"{alice}\".admins");
    assert_eq!(
        at(&e),
        (Some(2), Some(1), Some(key.as_str()), &unknown(USER_KEYS))
    );
    assert_eq!(
        e.to_string(),
        format!(
            "policy.toml:2:1: key '{key}': unknown key; expected one of: rate, quota, limits, identity_limits, allow_listen, allow_user_namespaces"
        )
    );
    let e = rejected(&format!("[users.\"{alice}\".quota]\nmax_jobs = 1\n"));
    let key = format!("users.\"{alice}\".quota.max_jobs");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(1),
            Some(key.as_str()),
            &unknown("max_running_jobs, max_output_bytes")
        )
    );
}

// C27: a number written as a string is not taken as that number.
#[test]
fn a_number_in_a_string_is_refused() {
    let e = rejected("[rate]\nrequests_per_second = \"10\"\n");
    let kind = PolicyErrorKind::WrongType(
        "invalid type: string \"10\", expected an integer or \"unlimited\"".into(),
    );
    assert_eq!(
        at(&e),
        (Some(2), Some(23), Some("rate.requests_per_second"), &kind)
    );
    assert_eq!(
        e.to_string(),
        "policy.toml:2:23: key 'rate.requests_per_second': \
         invalid type: string \"10\", expected an integer or \"unlimited\""
    );
}

// Wrong TOML types anywhere are refused with the deserializer's message.
#[test]
fn wrong_types_are_refused() {
    let alice = fp("alice");
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        (
            &format!("denylist = \"{alice}\"\n"),
            1,
            12,
            "denylist",
            &format!("invalid type: string \"{alice}\", expected a sequence"),
        ),
        (
            "admins = [1]\n",
            1,
            11,
            "admins[0]",
            "invalid type: integer `1`, expected a string",
        ),
        (
            "[quota]\nmax_running_jobs = 1.5\n",
            2,
            20,
            "quota.max_running_jobs",
            "invalid type: floating point `1.5`, expected an integer or \"unlimited\"",
        ),
        (
            "[rate]\nstart_burst = \"unlimited\"\n",
            2,
            15,
            "rate.start_burst",
            "invalid type: string \"unlimited\", expected an integer",
        ),
        (
            "[limits]\ncpus = \"fast\"\n",
            2,
            8,
            "limits.cpus",
            "invalid type: string \"fast\", expected a number of cores (like 2 or 1.5) or \"unlimited\"",
        ),
        (
            "[limits]\ncpus = \"1.5\"\n",
            2,
            8,
            "limits.cpus",
            "invalid type: string \"1.5\", expected a number of cores (like 2 or 1.5) or \"unlimited\"",
        ),
        (
            "[limits]\nmemory = \"1.5G\"\n",
            2,
            10,
            "limits.memory",
            "invalid value: string \"1.5G\", expected a size (an integer of bytes, or a string like \"512M\" or \"1G\") or \"unlimited\"",
        ),
        (
            "[limits]\npids = true\n",
            2,
            8,
            "limits.pids",
            "invalid type: boolean `true`, expected an integer or \"unlimited\"",
        ),
        (
            "rate = 5\n",
            1,
            8,
            "rate",
            "invalid type: integer `5`, expected a table",
        ),
        (
            &format!("[users]\n\"{alice}\" = 1\n"),
            2,
            after(&format!("\"{alice}\" = ")),
            &format!("users.\"{alice}\""),
            "invalid type: integer `1`, expected a table",
        ),
    ];
    for (text, line, column, key, message) in cases {
        let e = rejected(text);
        let kind = PolicyErrorKind::WrongType((*message).to_owned());
        assert_eq!(
            at(&e),
            (Some(*line), Some(*column), Some(*key), &kind),
            "{text}"
        );
    }
}

// Fingerprints have one spelling; anything else is refused wherever it
// is written, not normalised or skipped.
#[test]
fn malformed_fingerprints_are_refused() {
    let good = fp("alice");
    let hex = good.strip_prefix("sha256:").unwrap();
    let bad = [
        format!("sha256:{}", hex.to_uppercase()),
        hex.to_owned(),
        format!("SHA256:{hex}"),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}g", &hex[..63]),
        format!("sha256: {hex}"),
        String::new(),
    ];
    for value in &bad {
        let kind = PolicyErrorKind::BadFingerprint {
            value: value.clone(),
        };
        let e = rejected(&format!("denylist = [\"{good}\", \"{value}\"]\n"));
        assert_eq!(
            at(&e),
            (
                Some(1),
                Some(after(&format!("denylist = [\"{good}\", "))),
                Some("denylist[1]"),
                &kind
            ),
            "{value}"
        );
        let e = rejected(&format!("admins = [\n  \"{value}\",\n]\n"));
        assert_eq!(
            at(&e),
            (Some(2), Some(3), Some("admins[0]"), &kind),
            "{value}"
        );
        let e = rejected(&format!(
            "[users.\"{value}\".quota]\nmax_running_jobs = 1\n"
        ));
        let key = format!("users.{}", quote(value));
        assert_eq!(
            at(&e),
            (Some(1), Some(8), Some(key.as_str()), &kind),
            "{value}"
        );
    }
    let e = rejected(&format!("denylist = [\"{}\"]\n", hex.to_uppercase()));
    assert_eq!(
        e.to_string(),
        format!(
            "policy.toml:1:13: key 'denylist[0]': '{}' is not a fingerprint: write 'sha256:' \
             and 64 lower-case hex digits, as `jobs-ca fingerprint` prints",
            hex.to_uppercase()
        )
    );
}

// A bare users key (no quotes) that is not a fingerprint is refused too.
#[test]
fn a_bare_user_key_is_refused() {
    let e = rejected("[users.alice]\nquota.max_running_jobs = 1\n");
    let kind = PolicyErrorKind::BadFingerprint {
        value: "alice".into(),
    };
    assert_eq!(at(&e), (Some(1), Some(8), Some("users.alice"), &kind));
}

// The same fingerprint twice in one list is a mistake worth knowing of.
#[test]
fn a_repeated_fingerprint_is_refused() {
    let (alice, bob) = (fp("alice"), fp("bob"));
    let e = rejected(&format!(
        "denylist = [\n  \"{alice}\",\n  \"{bob}\",\n  \"{alice}\",\n]\n"
    ));
    let kind = PolicyErrorKind::RepeatedFingerprint {
        fingerprint: alice.clone(),
    };
    assert_eq!(at(&e), (Some(4), Some(3), Some("denylist[2]"), &kind));
    let e = rejected(&format!("admins = [\"{bob}\", \"{bob}\"]\n"));
    let kind = PolicyErrorKind::RepeatedFingerprint {
        fingerprint: bob.clone(),
    };
    assert_eq!(
        at(&e),
        (
            Some(1),
            Some(after(&format!("admins = [\"{bob}\", "))),
            Some("admins[1]"),
            &kind
        )
    );
}

// One identity cannot be both refused and an admin.
#[test]
fn a_denied_admin_is_refused() {
    let (alice, bob) = (fp("alice"), fp("bob"));
    let e = rejected(&format!(
        "denylist = [\"{alice}\"]\nadmins = [\"{bob}\", \"{alice}\"]\n"
    ));
    let kind = PolicyErrorKind::DeniedAdmin {
        fingerprint: alice.clone(),
    };
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(after(&format!("admins = [\"{bob}\", "))),
            Some("admins[1]"),
            &kind
        )
    );
    assert_eq!(
        e.to_string(),
        format!(
            "policy.toml:2:{}: key 'admins[1]': {alice} is both in 'denylist' and in 'admins'",
            after(&format!("admins = [\"{bob}\", "))
        )
    );
}

// A key written twice is refused by the TOML parser; we name it.
#[test]
fn a_duplicate_key_is_refused() {
    let e = rejected("[quota]\nmax_running_jobs = 1\nmax_running_jobs = 1\n");
    assert_eq!(
        at(&e),
        (
            Some(3),
            Some(1),
            Some("quota.max_running_jobs"),
            &PolicyErrorKind::DuplicateKey
        )
    );
    assert_eq!(
        e.to_string(),
        "policy.toml:3:1: key 'quota.max_running_jobs': duplicate key"
    );
    let e = rejected("admins = []\ndenylist = []\n  admins = []\n");
    assert_eq!(
        at(&e),
        (
            Some(3),
            Some(3),
            Some("admins"),
            &PolicyErrorKind::DuplicateKey
        )
    );
    let e = rejected("quota.max_running_jobs = 1\nquota . \"max_running_jobs\" = 2\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(9),
            Some("quota.max_running_jobs"),
            &PolicyErrorKind::DuplicateKey
        )
    );
    let alice = fp("alice");
    let e = rejected(&format!(
        "[quota]\nmax_running_jobs = 1\n[users.\"{alice}\"]\nquota.max_running_jobs = 1\n\
         [rate]\n[users.\"{alice}\".quota]\n"
    ));
    let key = format!("users.\"{alice}\".quota");
    assert_eq!(
        at(&e),
        (
            Some(6),
            Some(after(&format!("[users.\"{alice}\"."))),
            Some(key.as_str()),
            &PolicyErrorKind::DuplicateKey
        )
    );
    // Inside an inline table the key path is not recovered; the line is.
    let e = rejected("[quota]\nx = { a = 1, a = 2 }\n");
    assert_eq!(
        at(&e),
        (Some(2), Some(14), None, &PolicyErrorKind::DuplicateKey)
    );
}

// A table defined twice is refused as a duplicate of its header.
#[test]
fn a_duplicate_table_is_refused() {
    let e = rejected("[quota]\nmax_running_jobs = 1\n\n[quota]\nmax_output_bytes = 1\n");
    assert_eq!(
        at(&e),
        (
            Some(4),
            Some(2),
            Some("quota"),
            &PolicyErrorKind::DuplicateKey
        )
    );
    let alice = fp("alice");
    let e = rejected(&format!(
        "[users.\"{alice}\".rate]\n[rate]\n[users.\"{alice}\".rate]\n"
    ));
    let key = format!("users.\"{alice}\".rate");
    assert_eq!(
        at(&e),
        (
            Some(3),
            Some(after(&format!("[users.\"{alice}\"."))),
            Some(key.as_str()),
            &PolicyErrorKind::DuplicateKey
        )
    );
}

// Not TOML at all: the parser's message, with line and column.
#[test]
fn a_syntax_error_is_refused() {
    let e = rejected("[rate]\nrequests_per_second = 10\nstart_burst = \n");
    assert_eq!(
        at(&e),
        (
            Some(3),
            Some(15),
            None,
            &PolicyErrorKind::Syntax(
                "string values must be quoted, expected literal string".into()
            )
        )
    );
    let e = rejected("[rate\n");
    assert_eq!(
        at(&e),
        (
            Some(1),
            Some(6),
            None,
            &PolicyErrorKind::Syntax("unclosed table, expected `]`".into())
        )
    );
}

// A burst needs a limited rate in effect beside it, at the top level and
// per user.
#[test]
fn a_burst_without_a_rate_is_refused() {
    let e = rejected("[rate]\nrequest_burst = 40\n");
    let kind = out_of_range("40", "no burst while requests_per_second is absent");
    assert_eq!(
        at(&e),
        (Some(2), Some(17), Some("rate.request_burst"), &kind)
    );
    assert_eq!(
        e.to_string(),
        "policy.toml:2:17: key 'rate.request_burst': 40 is out of range: \
         no burst while requests_per_second is absent"
    );
    let e = rejected("[rate]\nstarts_per_minute = \"unlimited\"\nstart_burst = 5\n");
    let kind = out_of_range("5", "no burst while starts_per_minute is \"unlimited\"");
    assert_eq!(at(&e), (Some(3), Some(15), Some("rate.start_burst"), &kind));
    let e = rejected("[handshakes]\nburst = 50\n");
    let kind = out_of_range("50", "no burst while per_second is absent");
    assert_eq!(at(&e), (Some(2), Some(9), Some("handshakes.burst"), &kind));
    // A user's burst, with the user's rate lifted.
    let alice = fp("alice");
    let e = rejected(&format!(
        "[rate]\nrequests_per_second = 1\n[users.\"{alice}\".rate]\n\
         requests_per_second = \"unlimited\"\nrequest_burst = 9\n"
    ));
    let key = format!("users.\"{alice}\".rate.request_burst");
    let kind = out_of_range("9", "no burst while requests_per_second is \"unlimited\"");
    assert_eq!(at(&e), (Some(5), Some(17), Some(key.as_str()), &kind));
    // A user's burst with no rate anywhere.
    let e = rejected(&format!("[users.\"{alice}\".rate]\nstart_burst = 9\n"));
    let key = format!("users.\"{alice}\".rate.start_burst");
    let kind = out_of_range("9", "no burst while starts_per_minute is absent");
    assert_eq!(at(&e), (Some(2), Some(15), Some(key.as_str()), &kind));
    // A user's burst over the top-level rate is fine, and a top-level
    // burst does not stop a user's rate from being lifted.
    let p = parsed(&format!(
        "[rate]\nstarts_per_minute = 3\nstart_burst = 1\n\
         [users.\"{alice}\".rate]\nstart_burst = 9\n\
         [users.\"{}\".rate]\nstarts_per_minute = \"unlimited\"\n",
        fp("bob")
    ));
    assert_eq!(p.rules(&id("alice")).starts, per_minute(3, 9));
    assert_eq!(p.rules(&id("bob")).starts, None);
    assert_eq!(p.rules(&id("carol")).starts, per_minute(3, 1));
}

// Values outside their key's range are refused, naming the range.
#[test]
fn out_of_range_values_are_refused() {
    let max = u32::MAX;
    let rate = format!("an integer from 1 to {max}, or \"unlimited\"");
    let burst = format!("an integer from 1 to {max}");
    let memory = "at least 4.0 MiB (4194304 bytes) and at most 8 EiB, or \"unlimited\"";
    let cases: Vec<(String, &str, &str, String)> = vec![
        (
            "[rate]\nrequests_per_second = 0".into(),
            "rate.requests_per_second",
            "0",
            rate.clone(),
        ),
        (
            "[rate]\nstarts_per_minute = -5".into(),
            "rate.starts_per_minute",
            "-5",
            rate.clone(),
        ),
        (
            "[rate]\nrequests_per_second = 4294967296".into(),
            "rate.requests_per_second",
            "4294967296",
            rate,
        ),
        (
            "[rate]\nrequests_per_second = 1\nrequest_burst = 0".into(),
            "rate.request_burst",
            "0",
            burst.clone(),
        ),
        (
            "[handshakes]\nper_second = 0".into(),
            "handshakes.per_second",
            "0",
            burst.clone(),
        ),
        (
            "[handshakes]\nper_second = 1\nburst = 0".into(),
            "handshakes.burst",
            "0",
            burst,
        ),
        (
            "[quota]\nmax_running_jobs = -1".into(),
            "quota.max_running_jobs",
            "-1",
            format!("an integer from 0 to {max}, or \"unlimited\""),
        ),
        (
            "[quota]\nmax_output_bytes = 0".into(),
            "quota.max_output_bytes",
            "0",
            "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
        ),
        (
            "[quota]\nmax_output_bytes = \"0M\"".into(),
            "quota.max_output_bytes",
            "\"0M\"",
            "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
        ),
        (
            "[limits]\nmemory = \"1M\"".into(),
            "limits.memory",
            "\"1M\"",
            memory.into(),
        ),
        (
            "[limits]\nmemory = 4194303".into(),
            "limits.memory",
            "4194303",
            memory.into(),
        ),
        (
            "[limits]\npids = 4194305".into(),
            "limits.pids",
            "4194305",
            "an integer from 2 to 4194304, or \"unlimited\"".into(),
        ),
        (
            "[limits]\npids = 1".into(),
            "limits.pids",
            "1",
            "an integer from 2 to 4194304, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = 0.001".into(),
            "limits.cpus",
            "0.001",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = 0".into(),
            "limits.cpus",
            "0",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = 1.0005".into(),
            "limits.cpus",
            "1.0005",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = -1.5".into(),
            "limits.cpus",
            "-1.5",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = inf".into(),
            "limits.cpus",
            "inf",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\ncpus = 5000000".into(),
            "limits.cpus",
            "5000000",
            "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
        ),
        (
            "[limits]\nio_read = 0".into(),
            "limits.io_read",
            "0",
            "at least 1 byte and at most 8 EiB per second, or \"unlimited\"".into(),
        ),
        (
            // Byte counts are stored as SQLite (signed 64-bit) integers.
            "[quota]\nmax_output_bytes = \"8388608T\"".into(),
            "quota.max_output_bytes",
            "\"8388608T\"",
            "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
        ),
    ];
    for (text, key, value, expected) in &cases {
        let e = rejected(text);
        let column = text.rsplit('\n').next().unwrap().find(" = ").unwrap() + 4;
        let line = text.lines().count();
        assert_eq!(
            at(&e),
            (
                Some(line),
                Some(column),
                Some(*key),
                &out_of_range(value, expected)
            ),
            "{text}"
        );
    }
}

// The smallest and largest accepted values are accepted, and units
// convert as in the CLI.
#[test]
fn range_bounds_and_units_are_accepted() {
    let p = parsed(
        "[rate]\nrequests_per_second = 4294967295\nrequest_burst = 1\n\
         [quota]\nmax_running_jobs = 0\nmax_output_bytes = 1\n\
         [limits]\nmemory = \"4M\"\ncpus = 0.01\npids = 4194304\nio_read = 1\nio_write = \"1k\"\n",
    );
    let r = p.rules(&id("anyone"));
    assert_eq!(
        r.requests,
        Some(Rate {
            count: n(u32::MAX),
            period: SECOND,
            burst: n(1)
        })
    );
    assert_eq!(r.jobs.max_running_jobs, Some(0));
    assert_eq!(r.jobs.max_output_bytes, Override::Limit(1));
    assert_eq!(
        r.jobs.ceilings,
        CeilingOverrides {
            memory_bytes: Override::Limit(MIN_MEMORY_BYTES),
            cpu_millis: Override::Limit(MIN_CPU_MILLIS),
            pids: Override::Limit(MAX_PIDS),
            io_read_bps: Override::Limit(1),
            io_write_bps: Override::Limit(1024),
        }
    );
    let p = parsed("[limits]\ncpus = 1.125\npids = 2\n");
    let c = p.rules(&id("anyone")).jobs.ceilings;
    assert_eq!(
        (c.cpu_millis, c.pids),
        (Override::Limit(1125), Override::Limit(MIN_PIDS))
    );
}

// Keys that need quotes are quoted in messages, as TOML would write them.
#[test]
fn odd_keys_are_quoted_in_messages() {
    let e = rejected("\"deny list\" = []\n");
    assert_eq!(
        at(&e),
        (Some(1), Some(1), Some("\"deny list\""), &unknown(TOP_KEYS))
    );
    assert_eq!(quote("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    assert_eq!(quote(""), "\"\"");
    assert_eq!(quote("max_running-jobs2"), "max_running-jobs2");
}

/// `Policy::load(path)`'s error, which must come promptly: a load that
/// blocks (a FIFO without a writer) fails the test instead of hanging it.
fn load_refused(path: &Path) -> PolicyError {
    let (done, result) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        // The receiver is gone only after a timeout, which already fails.
        let _ = done.send(Policy::load(&owned));
    });
    match result.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(p)) => panic!("{} accepted: {p:?}", path.display()),
        Ok(Err(e)) => e,
        Err(_) => panic!("Policy::load({}) blocked", path.display()),
    }
}

/// A load error with no position: just the file and the kind.
fn whole_file(path: &Path, kind: PolicyErrorKind) -> PolicyError {
    PolicyError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        kind,
    }
}

// `--policy fifo` once blocked jobsd (and a SIGHUP reload, the whole
// server) forever waiting for a writer; it is refused at once.
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("p.toml");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let e = load_refused(&fifo);
    assert_eq!(e, whole_file(&fifo, PolicyErrorKind::NotRegularFile));
    assert_eq!(
        e.to_string(),
        format!("{}: not a regular file", fifo.display())
    );
}

// Devices are refused unread: /dev/null is not an empty policy, and
// /dev/zero does not grow memory without bound.
#[test]
fn devices_are_refused() {
    for device in ["/dev/null", "/dev/zero"] {
        let device = Path::new(device);
        assert_eq!(
            load_refused(device),
            whole_file(device, PolicyErrorKind::NotRegularFile)
        );
    }
}

// A directory is not a policy either.
#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        load_refused(dir.path()),
        whole_file(dir.path(), PolicyErrorKind::NotRegularFile)
    );
}

// A file over the cap is refused before it is read; one exactly at the
// cap is read.
#[test]
fn a_file_over_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cap = usize::try_from(MAX_POLICY_BYTES).unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("#{}\n", "x".repeat(cap - 1))).unwrap();
    let e = load_refused(&big);
    assert_eq!(
        e,
        whole_file(
            &big,
            PolicyErrorKind::TooLarge {
                max: MAX_POLICY_BYTES
            }
        )
    );
    assert_eq!(
        e.to_string(),
        format!("{}: the file is larger than 1048576 bytes", big.display())
    );
    let at_cap = dir.path().join("at_cap.toml");
    std::fs::write(&at_cap, format!("#{}\n", "x".repeat(cap - 2))).unwrap();
    assert_eq!(std::fs::metadata(&at_cap).unwrap().len(), MAX_POLICY_BYTES);
    let p = Policy::load(&at_cap).unwrap();
    assert_eq!(p.summary(), Policy::default().summary());
}

// Operators point --policy at a symlink they swap; it is followed, and
// the policy remembers the link (so a reload reads the new target).
#[test]
fn a_symlink_to_a_regular_file_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("v1.toml");
    std::fs::write(&target, format!("denylist = [\"{}\"]\n", fp("mallory"))).unwrap();
    let link = dir.path().join("policy.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let p = Policy::load(&link).unwrap();
    assert!(p.is_denied(&id("mallory")));
    assert_eq!(p.source(), Some(link.as_path()));
    // A symlink to something that is not a regular file is still refused.
    let to_null = dir.path().join("null.toml");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    assert_eq!(
        load_refused(&to_null),
        whole_file(&to_null, PolicyErrorKind::NotRegularFile)
    );
}

// A file that is not UTF-8 is refused, pointing at the first bad byte.
#[test]
fn a_file_not_in_utf8_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"denylist = []\n# caf\xe9\n").unwrap();
    let e = load_refused(&path);
    assert_eq!(
        e,
        PolicyError {
            line: Some(2),
            column: Some(6),
            ..whole_file(&path, PolicyErrorKind::NotUtf8)
        }
    );
    assert_eq!(
        e.to_string(),
        format!("{}:2:6: not UTF-8 text", path.display())
    );
}

// A missing file is a read error with the OS's reason.
#[test]
fn a_missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    assert_eq!(
        load_refused(&path),
        whole_file(
            &path,
            PolicyErrorKind::Read("No such file or directory (os error 2)".into())
        )
    );
}

// A reload that takes identities off the denylist or the admins says so,
// counted each way.
#[test]
fn changes_count_identities_added_and_removed() {
    let (a, b, c, d, e) = (fp("a"), fp("b"), fp("c"), fp("d"), fp("e"));
    let old = parsed(&format!(
        "denylist = [\"{a}\", \"{b}\"]\nadmins = [\"{c}\"]\n"
    ));
    let new = parsed(&format!(
        "denylist = [\"{b}\", \"{d}\", \"{e}\"]\nadmins = [\"{a}\"]\n"
    ));
    assert_eq!(
        new.changes_from(&old),
        PolicyChanges {
            denied_added: 2,
            denied_removed: 1,
            admins_added: 1,
            admins_removed: 1,
        }
    );
    assert_eq!(
        old.changes_from(&new),
        PolicyChanges {
            denied_added: 1,
            denied_removed: 2,
            admins_added: 1,
            admins_removed: 1,
        }
    );
    let none = PolicyChanges {
        denied_added: 0,
        denied_removed: 0,
        admins_added: 0,
        admins_removed: 0,
    };
    assert_eq!(new.changes_from(&new), none);
    // Rates and quotas are not counted.
    assert_eq!(
        parsed("[rate]\nrequests_per_second = 1\n").changes_from(&Policy::default()),
        none
    );
    assert_eq!(
        Policy::default().changes_from(&old),
        PolicyChanges {
            denied_removed: 2,
            admins_removed: 1,
            ..none
        }
    );
}

// Line and column count characters, not bytes, from 1.
#[test]
fn positions_are_one_based_characters() {
    assert_eq!(position("", 0), (1, 1));
    assert_eq!(position("ab\ncd", 3), (2, 1));
    assert_eq!(position("ab\ncd", 4), (2, 2));
    assert_eq!(position("é = 1\nx", 3), (1, 3));
    assert_eq!(position("ab", 99), (1, 3));
}

/// The identity limits of `text`'s top level and of alice.
/// The identity limits of anyone and of alice, over a daemon without
/// identity limits of its own.
fn identity_limits_of(text: &str) -> (ResourceLimits, ResourceLimits) {
    let p = parsed(text);
    let none = ResourceLimits::default();
    (
        p.rules(&id("anyone")).jobs.identity_limits.apply(&none),
        p.rules(&id("alice")).jobs.identity_limits.apply(&none),
    )
}

// A daemon's identity limits apply where the policy says nothing; the
// policy replaces one field, and "unlimited" lifts one.
#[test]
fn identity_limits_override_the_daemons_field_by_field() {
    let daemon = ResourceLimits {
        memory_bytes: Some(8 << 30),
        cpu_millis: None,
        pids: Some(4096),
        ..ResourceLimits::default()
    };
    let alice = fp("alice");
    let p = parsed(&format!(
        "[identity_limits]\nmemory = \"2G\"\n\
         [users.\"{alice}\".identity_limits]\npids = \"unlimited\"\n"
    ));
    assert_eq!(
        p.rules(&id("anyone")).jobs.identity_limits.apply(&daemon),
        ResourceLimits {
            memory_bytes: Some(2 << 30),
            ..daemon
        }
    );
    assert_eq!(
        p.rules(&id("alice")).jobs.identity_limits.apply(&daemon),
        ResourceLimits {
            memory_bytes: Some(2 << 30),
            pids: None,
            ..daemon
        }
    );
    assert_eq!(
        parsed("")
            .rules(&id("anyone"))
            .jobs
            .identity_limits
            .apply(&daemon),
        daemon
    );
}

// Top-level [identity_limits] is everyone's; a user's table overrides it
// field by field, and "unlimited" lifts one field for that user only.
#[test]
fn identity_limits_merge_field_by_field() {
    let alice = fp("alice");
    let (top, own) = identity_limits_of(&format!(
        "[identity_limits]\nmemory = \"1G\"\ncpus = 1.5\npids = 100\n\
         [users.\"{alice}\".identity_limits]\ncpus = \"unlimited\"\npids = 10\n"
    ));
    let expected_top = ResourceLimits {
        memory_bytes: Some(1 << 30),
        cpu_millis: Some(1500),
        pids: Some(100),
        ..ResourceLimits::default()
    };
    assert_eq!(top, expected_top);
    assert_eq!(
        own,
        ResourceLimits {
            cpu_millis: None,
            pids: Some(10),
            ..expected_top
        }
    );
}

// No [identity_limits] anywhere: nothing is limited.
#[test]
fn identity_limits_default_to_none() {
    let (top, own) = identity_limits_of("");
    assert_eq!(top, ResourceLimits::default());
    assert_eq!(own, ResourceLimits::default());
}

// A user's [identity_limits] alone applies to that user only.
#[test]
fn a_users_identity_limits_leave_others_unlimited() {
    let alice = fp("alice");
    let (top, own) = identity_limits_of(&format!(
        "[users.\"{alice}\".identity_limits]\nmemory = 8388608\n"
    ));
    assert_eq!(top, ResourceLimits::default());
    assert_eq!(own.memory_bytes, Some(8 << 20));
}

// A misspelled key in [identity_limits] must not quietly mean "no limit".
#[test]
fn an_unknown_identity_limit_is_refused() {
    let e = rejected("[identity_limits]\nmemroy = \"1G\"\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(1),
            Some("identity_limits.memroy"),
            &unknown("memory, cpus, pids")
        )
    );
}

// io limits are per job: [identity_limits] has no io keys.
#[test]
fn io_is_not_an_identity_limit() {
    let e = rejected("[identity_limits]\nio_read = \"1M\"\n");
    assert_eq!(e.key.as_deref(), Some("identity_limits.io_read"));
    assert_eq!(e.kind, unknown("memory, cpus, pids"));
}

// Out-of-range and wrong-type identity limits name file, line and key.
#[test]
fn bad_identity_limit_values_are_refused() {
    let e = rejected("[identity_limits]\nmemory = \"1M\"\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(10),
            Some("identity_limits.memory"),
            &out_of_range(
                "\"1M\"",
                "at least 4.0 MiB (4194304 bytes) and at most 8 EiB, or \"unlimited\""
            )
        )
    );
    let e = rejected("[identity_limits]\npids = 1\n");
    assert_eq!(
        at(&e),
        (
            Some(2),
            Some(8),
            Some("identity_limits.pids"),
            &out_of_range("1", "an integer from 2 to 4194304, or \"unlimited\"")
        )
    );
    let alice = fp("alice");
    let e = rejected(&format!(
        "[users.\"{alice}\".identity_limits]\ncpus = \"two\"\n"
    ));
    assert_eq!(e.line, Some(2));
    assert_eq!(
        e.key.as_deref(),
        Some(format!("users.\"{alice}\".identity_limits.cpus").as_str())
    );
    assert!(matches!(e.kind, PolicyErrorKind::WrongType(_)), "{e}");
    assert_eq!(e.to_string().split(": ").next(), Some("policy.toml:2:8"));
}

// Grants in a user's table become that user's permits, and no one else's.
#[test]
fn grants_parse_into_permits() {
    let alice = fp("alice");
    let bob = fp("bob");
    let p = parsed(&format!(
        "[users.\"{alice}\"]\nallow_listen = true\nallow_user_namespaces = true\n\
         [users.\"{bob}\"]\nallow_listen = false\nallow_user_namespaces = true\n"
    ));
    assert_eq!(
        p.rules(&id("alice")).jobs.permits,
        JobPermits {
            listen: true,
            user_namespaces: true
        }
    );
    assert_eq!(
        p.rules(&id("bob")).jobs.permits,
        JobPermits {
            listen: false,
            user_namespaces: true
        }
    );
    assert_eq!(p.rules(&id("carol")).jobs.permits, JobPermits::default());
}

// An operator who writes a grant at the top level must not grant it to
// every identity: the file is refused.
#[test]
fn a_grant_at_the_top_level_is_refused() {
    for grant in ["allow_listen", "allow_user_namespaces"] {
        let e = rejected(&format!("admins = []\n{grant} = true\n"));
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some(grant),
                &PolicyErrorKind::GrantAtTopLevel
            )
        );
    }
}

// A grant is a boolean: "yes" is not true.
#[test]
fn a_grant_must_be_a_boolean() {
    let alice = fp("alice");
    let e = rejected(&format!("[users.\"{alice}\"]\nallow_listen = \"yes\"\n"));
    assert_eq!(e.line, Some(2));
    assert_eq!(
        e.key.as_deref(),
        Some(format!("users.\"{alice}\".allow_listen").as_str())
    );
    assert!(matches!(e.kind, PolicyErrorKind::WrongType(_)), "{e}");
}

// A grant inside a sub-table of a user is not a grant: refused as unknown.
#[test]
fn a_grant_inside_a_users_quota_is_refused() {
    let alice = fp("alice");
    let e = rejected(&format!("[users.\"{alice}\".quota]\nallow_listen = true\n"));
    assert_eq!(
        e.key.as_deref(),
        Some(format!("users.\"{alice}\".quota.allow_listen").as_str())
    );
    assert_eq!(e.kind, unknown("max_running_jobs, max_output_bytes"));
}

// keep_jobs_when_banned is read as written, absent is "jobsd decides", and a
// string where a boolean belongs is refused, naming the key.
#[test]
fn keep_jobs_when_banned_is_a_top_level_boolean() {
    assert_eq!(parsed("").keep_jobs_when_banned(), None);
    assert_eq!(
        parsed("keep_jobs_when_banned = true\n").keep_jobs_when_banned(),
        Some(true)
    );
    assert_eq!(
        parsed("keep_jobs_when_banned = false\n").keep_jobs_when_banned(),
        Some(false)
    );
    let e = rejected("keep_jobs_when_banned = \"yes\"\n");
    assert_eq!(e.key.as_deref(), Some("keep_jobs_when_banned"));
    let alice = fp("alice");
    let e = rejected(&format!(
        "[users.\"{alice}\"]\nkeep_jobs_when_banned = true\n"
    ));
    assert_eq!(
        e.key.as_deref(),
        Some(format!("users.\"{alice}\".keep_jobs_when_banned").as_str())
    );
}
