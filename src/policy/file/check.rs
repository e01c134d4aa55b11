//! Step 3 of parsing: what serde cannot check (fingerprints, ranges,
//! repeats, bursts without a rate), and the merge of each user over the
//! top level.

#[allow(clippy::wildcard_imports)]
use super::*;

/// One table set's values after range checks: the top level, or one user's
/// overrides. [`Override::Inherit`] and `None` mean "not written here".
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Settings {
    pub(super) requests: Override<NonZeroU32>,
    pub(super) request_burst: Option<NonZeroU32>,
    pub(super) starts: Override<NonZeroU32>,
    pub(super) start_burst: Option<NonZeroU32>,
    pub(super) max_running_jobs: Override<u32>,
    pub(super) max_output_bytes: Override<u64>,
    pub(super) ceilings: CeilingOverrides,
    /// `[identity_limits]`: memory, cpus and pids only (io stays `Inherit`).
    pub(super) identity: CeilingOverrides,
}

impl Settings {
    /// These settings where written, else `base`'s, field by field; see
    /// [`burst_over`] for the bursts.
    fn over(&self, base: &Settings) -> Settings {
        Settings {
            requests: or(self.requests, base.requests),
            request_burst: burst_over(self.request_burst, self.requests, base.request_burst),
            starts: or(self.starts, base.starts),
            start_burst: burst_over(self.start_burst, self.starts, base.start_burst),
            max_running_jobs: or(self.max_running_jobs, base.max_running_jobs),
            max_output_bytes: or(self.max_output_bytes, base.max_output_bytes),
            ceilings: overrides_over(&self.ceilings, &base.ceilings),
            identity: overrides_over(&self.identity, &base.identity),
        }
    }

    /// The rules these (merged) settings make.
    fn rules(&self) -> Rules {
        Rules {
            requests: rate(self.requests, self.request_burst, SECOND),
            starts: rate(self.starts, self.start_burst, MINUTE),
            jobs: JobQuota {
                max_running_jobs: limit(self.max_running_jobs),
                // Inherit: the daemon's default (`jobsd --max-output`).
                max_output_bytes: self.max_output_bytes,
                ceilings: self.ceilings,
                // Inherit: the daemon's identity limits (`jobsd
                // --identity-max-*`); "unlimited" lifts one.
                identity_limits: self.identity,
                permits: JobPermits::default(),
            },
        }
    }
}

/// `own` where written, else `base`, field by field.
fn overrides_over(own: &CeilingOverrides, base: &CeilingOverrides) -> CeilingOverrides {
    CeilingOverrides {
        memory_bytes: or(own.memory_bytes, base.memory_bytes),
        cpu_millis: or(own.cpu_millis, base.cpu_millis),
        pids: or(own.pids, base.pids),
        io_read_bps: or(own.io_read_bps, base.io_read_bps),
        io_write_bps: or(own.io_write_bps, base.io_write_bps),
    }
}

/// `value` if written, else `base`.
pub(super) fn or<T>(value: Override<T>, base: Override<T>) -> Override<T> {
    match value {
        Override::Inherit => base,
        written => written,
    }
}

/// A user's burst: their own, else none (so their own rate, in [`rate`])
/// if they set the rate itself, else the top level's.
///
/// A top-level burst is sized for the top-level rate: `request_burst = 1000`
/// beside `requests_per_second = 100` must not give a user throttled to
/// `requests_per_second = 1` a thousand requests at once.
pub(super) fn burst_over(
    own: Option<NonZeroU32>,
    own_rate: Override<NonZeroU32>,
    base: Option<NonZeroU32>,
) -> Option<NonZeroU32> {
    match (own, own_rate) {
        (Some(burst), _) => Some(burst),
        (None, Override::Inherit) => base,
        (None, Override::Limit(_) | Override::Unlimited) => None,
    }
}

/// A quota: `None` unless a limit is written.
pub(super) fn limit<T>(value: Override<T>) -> Option<T> {
    match value {
        Override::Limit(v) => Some(v),
        Override::Inherit | Override::Unlimited => None,
    }
}

/// A rate of `count` per `period`; the burst defaults to the count.
pub(super) fn rate(
    count: Override<NonZeroU32>,
    burst: Option<NonZeroU32>,
    period: Duration,
) -> Option<Rate> {
    limit(count).map(|count| Rate {
        count,
        period,
        burst: burst.unwrap_or(count),
    })
}

/// The tables of one table set (the top level, or one user's).
#[derive(Clone, Copy)]
pub(super) struct Tables<'a> {
    pub(super) rate: Option<&'a RawRate>,
    pub(super) quota: Option<&'a RawQuota>,
    pub(super) limits: Option<&'a RawLimits>,
    pub(super) identity: Option<&'a RawIdentityLimits>,
}

/// The text being checked, and the file it came from.
pub(super) struct Check<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Check<'_> {
    pub(super) fn policy(
        &self,
        raw: RawPolicy,
        user_keys: &HashMap<String, Range<usize>>,
    ) -> Result<Policy, Problem> {
        let denylist =
            self.fingerprints(raw.denylist.as_deref().unwrap_or_default(), "denylist")?;
        let admin_list = raw.admins.as_deref().unwrap_or_default();
        let admins = self.fingerprints(admin_list, "admins")?;
        let denied: HashSet<Identity> = denylist.into_iter().collect();
        for (index, (identity, written)) in admins.iter().zip(admin_list).enumerate() {
            if denied.contains(identity) {
                return Err(Problem::new(
                    Some(written.span()),
                    Some(format!("admins[{index}]")),
                    PolicyErrorKind::DeniedAdmin {
                        fingerprint: written.get_ref().clone(),
                    },
                ));
            }
        }

        let top = self.settings(
            "",
            Tables {
                rate: raw.rate.as_ref(),
                quota: raw.quota.as_ref(),
                limits: raw.limits.as_ref(),
                identity: raw.identity_limits.as_ref(),
            },
            &Settings::default(),
        )?;
        let handshakes = self.handshakes(raw.handshakes.as_ref())?;
        let mut users = HashMap::new();
        for (name, user) in raw.users.unwrap_or_default() {
            let key = format!("users.{}", quote(&name));
            let identity = self.fingerprint(&name, user_keys.get(&name).cloned(), &key)?;
            let own = self.settings(
                &format!("{key}."),
                Tables {
                    rate: user.rate.as_ref(),
                    quota: user.quota.as_ref(),
                    limits: user.limits.as_ref(),
                    identity: user.identity_limits.as_ref(),
                },
                &top,
            )?;
            let mut rules = own.over(&top).rules();
            // Grants exist only here: there is no top-level default to merge.
            rules.jobs.permits = JobPermits {
                listen: user.allow_listen.unwrap_or(false),
                user_namespaces: user.allow_user_namespaces.unwrap_or(false),
            };
            users.insert(identity, rules);
        }

        Ok(Policy {
            source: Some(self.path.to_path_buf()),
            denylist: denied,
            admins: admins.into_iter().collect(),
            defaults: top.rules(),
            users,
            handshakes,
            keep_jobs_when_banned: raw.keep_jobs_when_banned,
        })
    }

    /// The identities of one list, in order, refusing malformed and repeated
    /// fingerprints.
    fn fingerprints(&self, list: &[Spanned<String>], name: &str) -> Result<Vec<Identity>, Problem> {
        let mut seen = HashSet::new();
        let mut identities = Vec::with_capacity(list.len());
        for (index, written) in list.iter().enumerate() {
            let key = format!("{name}[{index}]");
            let identity = self.fingerprint(written.get_ref(), Some(written.span()), &key)?;
            if !seen.insert(identity) {
                return Err(Problem::new(
                    Some(written.span()),
                    Some(key),
                    PolicyErrorKind::RepeatedFingerprint {
                        fingerprint: written.get_ref().clone(),
                    },
                ));
            }
            identities.push(identity);
        }
        Ok(identities)
    }

    /// The identity `written` names, in the one canonical spelling only.
    fn fingerprint(
        &self,
        written: &str,
        span: Option<Range<usize>>,
        key: &str,
    ) -> Result<Identity, Problem> {
        written.parse().map_err(|_| {
            Problem::new(
                span,
                Some(key.to_owned()),
                PolicyErrorKind::BadFingerprint {
                    value: written.to_owned(),
                },
            )
        })
    }

    /// The range-checked settings of one table set. `prefix` is `""` or
    /// `users."…".`; `base` is what applies where these say nothing (the
    /// top level, for a user), needed to refuse a burst without a rate.
    fn settings(
        &self,
        prefix: &str,
        tables: Tables<'_>,
        base: &Settings,
    ) -> Result<Settings, Problem> {
        let Tables {
            rate,
            quota,
            limits,
            identity,
        } = tables;
        let key = |name: &str| format!("{prefix}{name}");
        let mut own = Settings::default();
        if let Some(identity) = identity {
            own.identity = self.resources(
                &key("identity_limits"),
                &identity.memory,
                &identity.cpus,
                &identity.pids,
            )?;
        }
        if let Some(rate) = rate {
            own.requests =
                self.count(&rate.requests_per_second, &key("rate.requests_per_second"))?;
            own.starts = self.count(&rate.starts_per_minute, &key("rate.starts_per_minute"))?;
            own.request_burst = self.burst(
                &rate.request_burst,
                &key("rate.request_burst"),
                or(own.requests, base.requests),
                "requests_per_second",
            )?;
            own.start_burst = self.burst(
                &rate.start_burst,
                &key("rate.start_burst"),
                or(own.starts, base.starts),
                "starts_per_minute",
            )?;
        }
        if let Some(quota) = quota {
            own.max_running_jobs = self.checked(
                &quota.max_running_jobs,
                &key("quota.max_running_jobs"),
                || format!("an integer from 0 to {}", u32::MAX),
                |s| integer(s).and_then(|n| u32::try_from(n).ok()),
            )?;
            own.max_output_bytes = self.bytes(
                &quota.max_output_bytes,
                &key("quota.max_output_bytes"),
                1,
                "",
            )?;
        }
        if let Some(limits) = limits {
            let resources =
                self.resources(&key("limits"), &limits.memory, &limits.cpus, &limits.pids)?;
            own.ceilings = CeilingOverrides {
                io_read_bps: self.bytes(
                    &limits.io_read,
                    &key("limits.io_read"),
                    1,
                    " per second",
                )?,
                io_write_bps: self.bytes(
                    &limits.io_write,
                    &key("limits.io_write"),
                    1,
                    " per second",
                )?,
                ..resources
            };
        }
        Ok(own)
    }

    /// `memory`, `cpus` and `pids` of the table `table` (`limits`,
    /// `identity_limits`, with a user's prefix), range-checked; io stays
    /// `Inherit`.
    fn resources(
        &self,
        table: &str,
        memory: &Field<Size>,
        cpus: &Field<Cores>,
        pids: &Field<IntegerOrUnlimited>,
    ) -> Result<CeilingOverrides, Problem> {
        let memory = self.bytes(memory, &format!("{table}.memory"), MIN_MEMORY_BYTES, "")?;
        let cpus = self.checked(
            cpus,
            &format!("{table}.cpus"),
            || {
                let min = f64::from(MIN_CPU_MILLIS) / 1000.0;
                format!("at least {min} cores, in steps of 0.001")
            },
            |s| cpu_millis(s).filter(|&m| m >= MIN_CPU_MILLIS),
        )?;
        let pids = self.checked(
            pids,
            &format!("{table}.pids"),
            || format!("an integer from {MIN_PIDS} to {MAX_PIDS}"),
            |s| {
                integer(s)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| (MIN_PIDS..=MAX_PIDS).contains(n))
            },
        )?;
        Ok(CeilingOverrides {
            memory_bytes: memory,
            cpu_millis: cpus,
            pids,
            ..CeilingOverrides::default()
        })
    }

    /// `[handshakes]`: per source address, one second period.
    fn handshakes(&self, raw: Option<&RawHandshakes>) -> Result<Option<Rate>, Problem> {
        let Some(raw) = raw else { return Ok(None) };
        let count = self.count(&raw.per_second, "handshakes.per_second")?;
        let burst = self.burst(&raw.burst, "handshakes.burst", count, "per_second")?;
        Ok(rate(count, burst, SECOND))
    }

    /// A rate's count: an integer from 1 (or `"unlimited"` where `S` allows).
    fn count<S: Shape>(
        &self,
        field: &Field<S>,
        key: &str,
    ) -> Result<Override<NonZeroU32>, Problem> {
        self.checked(
            field,
            key,
            || format!("an integer from 1 to {}", u32::MAX),
            positive,
        )
    }

    /// A burst: an integer from 1, only where the rate it belongs to is
    /// limited (`rate`: the value written beside it, else the base's).
    fn burst(
        &self,
        field: &Field<Integer>,
        key: &str,
        rate: Override<NonZeroU32>,
        rate_name: &str,
    ) -> Result<Option<NonZeroU32>, Problem> {
        let burst = self.checked(
            field,
            key,
            || format!("an integer from 1 to {}", u32::MAX),
            positive,
        )?;
        let (written, rate_is) = match (field, rate) {
            (Some(written), Override::Inherit) => (written, "absent"),
            (Some(written), Override::Unlimited) => (written, "\"unlimited\""),
            _ => return Ok(limit(burst)),
        };
        Err(Problem::new(
            Some(written.span()),
            Some(key.to_owned()),
            PolicyErrorKind::OutOfRange {
                value: self.written(written.span()),
                expected: format!("no burst while {rate_name} is {rate_is}"),
            },
        ))
    }

    /// A byte count or byte rate of at least `min` (`"unlimited"` allowed).
    fn bytes(
        &self,
        field: &Field<Size>,
        key: &str,
        min: u64,
        per: &str,
    ) -> Result<Override<u64>, Problem> {
        // The job store keeps byte counts as SQLite integers (i64).
        const MAX: u64 = i64::MAX as u64;
        let expected = || match min {
            1 => format!("at least 1 byte and at most 8 EiB{per}"),
            _ => format!(
                "at least {} ({min} bytes) and at most 8 EiB{per}",
                human_bytes(min)
            ),
        };
        self.checked(field, key, expected, |s| {
            let bytes = match s {
                Scalar::Bytes(b) => Some(b),
                s => integer(s).and_then(|n| u64::try_from(n).ok()),
            };
            bytes.filter(|&b| (min..=MAX).contains(&b))
        })
    }

    /// `field` as written: `Inherit` if absent, `Unlimited` for
    /// `"unlimited"` (only `S` that allow it get there), else `convert`'s
    /// value, or `OutOfRange` with `expected` if `convert` refuses it.
    fn checked<S: Shape, T>(
        &self,
        field: &Field<S>,
        key: &str,
        expected: impl FnOnce() -> String,
        convert: impl FnOnce(Scalar) -> Option<T>,
    ) -> Result<Override<T>, Problem> {
        let Some(written) = field else {
            return Ok(Override::Inherit);
        };
        let scalar = written.get_ref().scalar;
        if matches!(scalar, Scalar::Unlimited) {
            return Ok(Override::Unlimited);
        }
        match convert(scalar) {
            Some(value) => Ok(Override::Limit(value)),
            None => Err(Problem::new(
                Some(written.span()),
                Some(key.to_owned()),
                PolicyErrorKind::OutOfRange {
                    value: self.written(written.span()),
                    expected: if S::UNLIMITED {
                        format!("{}, or \"unlimited\"", expected())
                    } else {
                        expected()
                    },
                },
            )),
        }
    }

    /// The source text of `span`, as the user wrote it.
    fn written(&self, span: Range<usize>) -> String {
        self.text.get(span).unwrap_or_default().to_owned()
    }

    /// A TOML parser error: a duplicate key or table, or any other syntax
    /// error.
    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> Problem {
        let span = e.span();
        if e.message() == DUPLICATE_KEY {
            let key = span.clone().and_then(|s| self.duplicate_key(s));
            return Problem::new(span, key, PolicyErrorKind::DuplicateKey);
        }
        Problem::new(span, None, PolicyErrorKind::Syntax(e.message().to_owned()))
    }

    /// A serde error: an unknown key or a wrong type.
    pub(super) fn shape_error(&self, e: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
        let segments: Vec<Seg> = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Map { key } if key.starts_with(SPANNED_PRIVATE) => None,
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    Some(Seg::Key(key.clone()))
                }
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Unknown => Some(Seg::Key("?".to_owned())),
            })
            .collect();
        let key = (!segments.is_empty()).then(|| render(&segments));
        let message = e.inner().message();
        let kind = match unknown_field_expected(message) {
            Some(expected) => PolicyErrorKind::UnknownKey { expected },
            None => PolicyErrorKind::WrongType(message.to_owned()),
        };
        Problem::new(e.inner().span(), key, kind)
    }

    /// The dotted key of a duplicate whose name is at `span`: the path of
    /// the table header above it, then the (possibly dotted) key written
    /// from the start of its line. `None` where that is not a plain key,
    /// e.g. inside an inline table.
    fn duplicate_key(&self, span: Range<usize>) -> Option<String> {
        // The parser recovers past the error, so the tree has every header
        // with its span; the one just above the duplicate is its table.
        let (tree, _) = DeTable::parse_recoverable(self.text);
        let mut headers = Vec::new();
        collect_headers(tree.get_ref(), self.text, &mut Vec::new(), &mut headers);
        let header = headers
            .into_iter()
            .filter(|(header, _)| header.start <= span.start)
            .max_by_key(|(header, _)| header.start);
        let mut path = match header {
            // The table itself is defined twice.
            Some((header, path)) if span.end <= header.end => return Some(render(&path)),
            Some((_, path)) => path,
            None => Vec::new(),
        };
        let line_start = self
            .text
            .get(..span.start)?
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let written = self.text.get(line_start..span.end)?.trim_start();
        path.extend(key_segments(written)?);
        Some(render(&path))
    }
}

/// The integer, if `s` is one.
pub(super) fn integer(s: Scalar) -> Option<i64> {
    match s {
        Scalar::Integer(n) => Some(n),
        Scalar::Float(_) | Scalar::Bytes(_) | Scalar::Unlimited => None,
    }
}

/// An integer from 1 to `u32::MAX`.
pub(super) fn positive(s: Scalar) -> Option<NonZeroU32> {
    integer(s)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

/// Cores in thousandths, as `parse_cpus` reads them from the CLI: at most
/// three decimals, not negative.
pub(super) fn cpu_millis(s: Scalar) -> Option<u32> {
    match s {
        Scalar::Integer(n) => u32::try_from(n).ok()?.checked_mul(1000),
        // Display of a finite f64 is its shortest exact decimal, never in
        // exponent form, so `0.5` reads as "0.5" and `1e-4` as "0.0001".
        Scalar::Float(f) if f.is_finite() && f >= 0.0 => parse_cpus(&f.to_string()).ok(),
        Scalar::Float(_) | Scalar::Bytes(_) | Scalar::Unlimited => None,
    }
}
