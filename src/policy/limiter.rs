//! Token buckets per identity and per connection source (GCRA via
//! `governor`).
//!
//! This file owns the rate-limiting state of the daemon: [`Limiters`] (a
//! request bucket and a start bucket per identity) and [`HandshakeLimiter`]
//! (a bucket per [`Source`], for TLS handshakes before anyone is
//! authenticated). Both live as long as the server, so a limit holds across
//! every connection and every certificate of one identity, or of one source.
//! It does not decide which rate applies: callers pass the rate the policy in
//! force gives, at each check.
//!
//! Time is read from tokio's clock ([`TokioClock`]), so tests drive the
//! buckets with paused time (`#[tokio::test(start_paused = true)]` and
//! `tokio::time::advance`) instead of sleeping. Outside a runtime tokio's
//! clock is the monotonic system clock.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

use super::Rate;
use crate::auth::Identity;

/// Longest a bucket may take to fill from empty, in nanoseconds (2^62 ns,
/// about 146 years). governor keeps time as `u64` nanoseconds and panics on
/// overflow; clamping every quota to this keeps its arithmetic far from
/// `u64::MAX` whatever a [`Rate`] says. Any rate near it is "practically
/// never refills" anyway.
const MAX_FILL_NANOS: u64 = 1 << 62;

/// What a connection is counted under before anyone is authenticated: by
/// the pending-connection caps and by the handshake buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A peer elsewhere: its address as `source_of` counts it (build it
    /// with `Source::from(ip)`, which does).
    Address(IpAddr),
    /// A peer on this machine: the uid owning its socket. Every local user
    /// connects from the same loopback addresses, so counting them by
    /// address would let one of them spend every other's share.
    LocalUser(u32),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        Self::Address(source_of(ip))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(ip) => write!(f, "{ip}"),
            Self::LocalUser(uid) => write!(f, "local uid {uid}"),
        }
    }
}

/// Handshake buckets kept before full ones are dropped. 4096 entries cost
/// well under a megabyte, and the pending-connection caps in
/// `server/accept.rs` (1024 in all) mean fewer sources than this are ever in
/// a handshake at once, so legitimate load rarely pays for a sweep.
const HANDSHAKE_SWEEP_AT: usize = 4096;

/// How often a check that was refused with a zero wait is retried before a
/// 1 ns wait is reported. A zero wait means the token arrived between the
/// check and the reading of the clock; retrying takes it. Another thread may
/// take it first, so the loop is bounded.
const ZERO_WAIT_RETRIES: usize = 3;

/// The source address a connection counts against: an IPv4 address as it is,
/// an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as that IPv4 address, any
/// other IPv6 address as its /64 prefix (host bits zero). One host is usually
/// given a whole /64, so counting single IPv6 addresses would be no limit.
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
    }
}

/// A governor [`Clock`] reading [`tokio::time::Instant::now`].
///
/// Under a runtime whose time is paused (tokio's `test-util`), it reads the
/// paused clock; otherwise, and outside any runtime, tokio falls back to
/// [`std::time::Instant::now`]. (With `test-util` compiled in, tokio panics
/// only when asked for the time while a thread's locals are being destroyed;
/// no bucket is checked then.)
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokioClock;

/// A reading of [`TokioClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(tokio::time::Instant);

impl Add<Nanos> for Tick {
    type Output = Tick;

    fn add(self, other: Nanos) -> Tick {
        Tick(self.0 + Duration::from(other))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        // Saturating, as the trait requires; the elapsed time of a process is
        // far below the 584 years where `Nanos::from` would panic.
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(Duration::from(duration))
            .map_or(*self, Tick)
    }
}

impl Clock for TokioClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        Tick(tokio::time::Instant::now())
    }
}

/// One bucket on its own.
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Tick>>;

/// Buckets keyed by source address, all under one quota.
type KeyedLimiter =
    RateLimiter<Source, HashMapStateStore<Source>, TokioClock, NoOpMiddleware<Tick>>;

/// The governor quota of `rate`: one token every `period / count` (rounded
/// down to whole nanoseconds, at least 1 ns), at most `burst` saved — e.g.
/// 20 per second is one every 50 ms, 5 per minute one every 12 s. A rate
/// whose bucket would take longer than [`MAX_FILL_NANOS`] to fill gets a
/// smaller burst, or a faster refill, so that it does not.
fn quota(rate: Rate) -> Quota {
    let per_token = u64::try_from((rate.period / rate.count.get()).as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_FILL_NANOS);
    let most_burst = u32::try_from(MAX_FILL_NANOS / per_token).unwrap_or(u32::MAX);
    let burst = NonZeroU32::new(rate.burst.get().min(most_burst)).unwrap_or(NonZeroU32::MIN);
    // `with_period` is `None` only for a zero period, and `per_token` is at
    // least 1 ns; the fallback is that same one-token-per-nanosecond quota
    // (governor rounds its sub-nanosecond period up to 1 ns).
    Quota::with_period(Duration::from_nanos(per_token))
        .unwrap_or(Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// The wait a refusal reports: from now until the next token, never zero.
///
/// `check` is called again while the wait comes out zero (the token arrived
/// after the check read the clock), a few times at most.
fn take<C>(check: C) -> Result<(), Duration>
where
    C: Fn() -> Result<(), NotUntil<Tick>>,
{
    let mut retries = 0;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(TokioClock.now());
                if !wait.is_zero() {
                    return Err(wait);
                }
                if retries == ZERO_WAIT_RETRIES {
                    return Err(Duration::from_nanos(1));
                }
                retries += 1;
            }
        }
    }
}

/// A bucket and the rate it was made for.
struct Bucket {
    rate: Rate,
    limiter: DirectLimiter,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            limiter: RateLimiter::direct_with_clock(quota(rate), TokioClock),
        }
    }
}

/// One bucket per key, each under its own rate.
struct Buckets<K> {
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> Buckets<K> {
    /// Takes a token of `key` under `rate`; see [`Limiters::check_request`].
    fn check(&self, key: K, rate: Option<Rate>) -> Result<(), Duration> {
        // A panic elsewhere while holding the lock leaves the map consistent:
        // every update is a single insert or remove.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rate) = rate else {
            map.remove(&key);
            return Ok(());
        };
        let bucket = map.entry(key).or_insert_with(|| Bucket::new(rate));
        if bucket.rate != rate {
            *bucket = Bucket::new(rate);
        }
        take(|| bucket.limiter.check())
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Request and start buckets, one pair per identity.
///
/// A bucket is made at an identity's first limited request and then kept,
/// one per authenticated identity (identities need a certificate from the
/// CA, so their number is the operator's to bound). It is replaced, full,
/// when the rate passed for the identity changes (a policy reload changed
/// it), and kept with its state when the rate is the same, so a reload does
/// not hand everyone a fresh burst. A check with no rate drops the
/// identity's bucket of that kind.
#[derive(Default)]
pub struct Limiters {
    requests: Buckets<Identity>,
    starts: Buckets<Identity>,
}

impl fmt::Debug for Limiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiters")
            .field("request_buckets", &self.requests.len())
            .field("start_buckets", &self.starts.len())
            .finish()
    }
}

impl Limiters {
    /// Empty buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one request token of `identity` under `rate` (`None`: not
    /// limited, always passes and keeps no state).
    ///
    /// # Errors
    /// How long until a token is available (never zero); no token was taken.
    pub fn check_request(&self, identity: Identity, rate: Option<Rate>) -> Result<(), Duration> {
        self.requests.check(identity, rate)
    }

    /// Takes one start token of `identity` under `rate` (`None`: not
    /// limited). Start tokens are a bucket of their own, apart from the
    /// request tokens.
    ///
    /// # Errors
    /// How long until a token is available (never zero); no token was taken.
    pub fn check_start(&self, identity: Identity, rate: Option<Rate>) -> Result<(), Duration> {
        self.starts.check(identity, rate)
    }
}

/// The handshake buckets in force and the rate they were made for.
struct Handshakes {
    rate: Rate,
    limiter: KeyedLimiter,
    /// Map size at which the next sweep runs.
    sweep_at: usize,
}

/// Handshake buckets, one per [`Source`]: a local user (the uid owning the
/// peer's socket), or a remote address: an IPv4 address (an IPv4-mapped
/// IPv6 address counts as that IPv4 address) or an IPv6 /64.
///
/// Memory stays bounded without a background task or polling: when the map
/// reaches 4096 sources, a check sweeps out the buckets that are full again
/// (indistinguishable from a new one), and the next sweep waits until the
/// map has doubled from what was left, so sweeps cost O(1) per check
/// amortised. A sweep keeps the sources whose buckets are not full yet, i.e.
/// that handshook within about one bucket-fill time (`burst` tokens) plus
/// one token interval, a few dozen bytes each, so the map holds at most about
/// twice as many sources as were seen in that window, or 4096. A change of rate replaces every bucket
/// (all full); no rate drops them all.
#[derive(Default)]
pub struct HandshakeLimiter {
    state: Mutex<Option<Handshakes>>,
}

impl fmt::Debug for HandshakeLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeLimiter")
            .field("sources", &self.len())
            .finish()
    }
}

impl HandshakeLimiter {
    /// Empty buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one handshake token of `source` under `rate` (`None`: not
    /// limited, always passes and keeps no state).
    ///
    /// # Errors
    /// How long until a token is available (never zero); no token was taken.
    pub fn check(&self, source: impl Into<Source>, rate: Option<Rate>) -> Result<(), Duration> {
        // As in `Buckets::check`: every update leaves the state consistent.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(rate) = rate else {
            *state = None;
            return Ok(());
        };
        let handshakes = match &mut *state {
            Some(handshakes) if handshakes.rate == rate => handshakes,
            other => other.insert(Handshakes {
                rate,
                limiter: RateLimiter::hashmap_with_clock(quota(rate), TokioClock),
                sweep_at: HANDSHAKE_SWEEP_AT,
            }),
        };
        let key = match source.into() {
            Source::Address(ip) => Source::from(ip),
            local @ Source::LocalUser(_) => local,
        };
        let result = take(|| handshakes.limiter.check_key(&key));
        if handshakes.limiter.len() >= handshakes.sweep_at {
            handshakes.limiter.retain_recent();
            handshakes.limiter.shrink_to_fit();
            handshakes.sweep_at = handshakes
                .limiter
                .len()
                .saturating_mul(2)
                .max(HANDSHAKE_SWEEP_AT);
        }
        result
    }

    /// Sources with a bucket.
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |handshakes| handshakes.limiter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::time::advance;

    fn rate(count: u32, period: Duration, burst: u32) -> Option<Rate> {
        Some(Rate {
            count: NonZeroU32::new(count).unwrap(),
            period,
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    fn per_second(count: u32, burst: u32) -> Option<Rate> {
        rate(count, Duration::from_secs(1), burst)
    }

    fn per_minute(count: u32, burst: u32) -> Option<Rate> {
        rate(count, Duration::from_secs(60), burst)
    }

    fn identity(n: u8) -> Identity {
        Identity::from_spki_der(&[n])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    // A Rate becomes one token per period/count, truncated to whole
    // nanoseconds, with the burst as written.
    #[test]
    fn quota_is_period_over_count() {
        let q = quota(per_second(20, 7).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_millis(50));
        assert_eq!(q.burst_size().get(), 7);
        let q = quota(per_minute(5, 1).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_secs(12));
        let q = quota(per_second(3, 1).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_nanos(333_333_333));
    }

    // Rates governor cannot represent are clamped instead of panicking: more
    // than one token per nanosecond, and a bucket taking centuries to fill.
    #[tokio::test(start_paused = true)]
    async fn extreme_rates_are_clamped() {
        let q = quota(rate(u32::MAX, Duration::from_nanos(1), 1).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_nanos(1));
        let q = quota(rate(1, Duration::MAX, u32::MAX).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_nanos(MAX_FILL_NANOS));
        assert_eq!(q.burst_size().get(), 1);
        let q = quota(rate(1, Duration::from_secs(3600), u32::MAX).unwrap());
        assert_eq!(
            u64::from(q.burst_size().get()),
            MAX_FILL_NANOS / 3_600_000_000_000
        );
        // And such buckets work.
        let limiters = Limiters::new();
        let slow = rate(1, Duration::MAX, u32::MAX);
        assert_eq!(limiters.check_request(identity(1), slow), Ok(()));
        assert_eq!(
            limiters.check_request(identity(1), slow),
            Err(Duration::from_nanos(MAX_FILL_NANOS))
        );
    }

    // An identity with 20 requests/s and a burst of 3 gets 3 at once; the
    // 4th is refused with exactly the 50 ms until the next token.
    #[tokio::test(start_paused = true)]
    async fn burst_passes_then_refused_with_exact_wait() {
        let limiters = Limiters::new();
        let alice = identity(1);
        for _ in 0..3 {
            assert_eq!(limiters.check_request(alice, per_second(20, 3)), Ok(()));
        }
        assert_eq!(
            limiters.check_request(alice, per_second(20, 3)),
            Err(Duration::from_millis(50))
        );
        // A refusal takes no token: the wait shrinks only with time.
        advance(Duration::from_millis(20)).await;
        assert_eq!(
            limiters.check_request(alice, per_second(20, 3)),
            Err(Duration::from_millis(30))
        );
    }

    // Once the burst is spent, each period/count lets exactly one more
    // through, and not one nanosecond earlier.
    #[tokio::test(start_paused = true)]
    async fn tokens_refill_at_the_rate() {
        let limiters = Limiters::new();
        let alice = identity(1);
        let starts = per_minute(5, 2);
        assert_eq!(limiters.check_start(alice, starts), Ok(()));
        assert_eq!(limiters.check_start(alice, starts), Ok(()));
        assert_eq!(
            limiters.check_start(alice, starts),
            Err(Duration::from_secs(12))
        );
        for _ in 0..3 {
            advance(Duration::from_secs(12) - Duration::from_nanos(1)).await;
            assert_eq!(
                limiters.check_start(alice, starts),
                Err(Duration::from_nanos(1))
            );
            advance(Duration::from_nanos(1)).await;
            assert_eq!(limiters.check_start(alice, starts), Ok(()));
            assert_eq!(
                limiters.check_start(alice, starts),
                Err(Duration::from_secs(12))
            );
        }
        // A long pause saves up the burst and no more.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(limiters.check_start(alice, starts), Ok(()));
        assert_eq!(limiters.check_start(alice, starts), Ok(()));
        assert_eq!(
            limiters.check_start(alice, starts),
            Err(Duration::from_secs(12))
        );
    }

    // Alice spending her burst leaves Bob's untouched.
    #[tokio::test(start_paused = true)]
    async fn identities_are_independent() {
        let limiters = Limiters::new();
        let (alice, bob) = (identity(1), identity(2));
        assert_eq!(limiters.check_request(alice, per_second(1, 1)), Ok(()));
        assert_eq!(
            limiters.check_request(alice, per_second(1, 1)),
            Err(Duration::from_secs(1))
        );
        assert_eq!(limiters.check_request(bob, per_second(1, 1)), Ok(()));
        assert_eq!(
            limiters.check_request(bob, per_second(1, 1)),
            Err(Duration::from_secs(1))
        );
    }

    // No rate: every request passes and no bucket is kept; a bucket kept
    // from an earlier rate is dropped.
    #[tokio::test(start_paused = true)]
    async fn no_rate_always_passes_and_keeps_nothing() {
        let limiters = Limiters::new();
        let alice = identity(1);
        for _ in 0..10_000 {
            assert_eq!(limiters.check_request(alice, None), Ok(()));
            assert_eq!(limiters.check_start(alice, None), Ok(()));
        }
        assert_eq!((limiters.requests.len(), limiters.starts.len()), (0, 0));
        assert_eq!(limiters.check_request(alice, per_second(1, 1)), Ok(()));
        assert_eq!(limiters.requests.len(), 1);
        assert_eq!(limiters.check_request(alice, None), Ok(()));
        assert_eq!(limiters.requests.len(), 0);
    }

    // A reload that changes Alice's rate gives her a bucket for the new rate
    // (full); one that keeps her rate keeps her spent bucket.
    #[tokio::test(start_paused = true)]
    async fn changed_rate_replaces_bucket_unchanged_keeps_it() {
        let limiters = Limiters::new();
        let alice = identity(1);
        let old = per_second(1, 2);
        assert_eq!(limiters.check_request(alice, old), Ok(()));
        assert_eq!(limiters.check_request(alice, old), Ok(()));
        assert_eq!(
            limiters.check_request(alice, old),
            Err(Duration::from_secs(1))
        );
        // The same rate again (an unchanged reload): still spent.
        assert_eq!(
            limiters.check_request(alice, per_second(1, 2)),
            Err(Duration::from_secs(1))
        );
        // A new rate: a new bucket, full at the new burst.
        let new = per_second(10, 3);
        for _ in 0..3 {
            assert_eq!(limiters.check_request(alice, new), Ok(()));
        }
        assert_eq!(
            limiters.check_request(alice, new),
            Err(Duration::from_millis(100))
        );
        // Only the burst changing counts as a change too.
        assert_eq!(limiters.check_request(alice, per_second(10, 4)), Ok(()));
    }

    // Spending every start token leaves the request bucket full, and the
    // other way round.
    #[tokio::test(start_paused = true)]
    async fn start_and_request_buckets_are_separate() {
        let limiters = Limiters::new();
        let alice = identity(1);
        let one = per_second(1, 1);
        assert_eq!(limiters.check_start(alice, one), Ok(()));
        assert_eq!(
            limiters.check_start(alice, one),
            Err(Duration::from_secs(1))
        );
        assert_eq!(limiters.check_request(alice, one), Ok(()));
        assert_eq!(
            limiters.check_request(alice, one),
            Err(Duration::from_secs(1))
        );
        advance(Duration::from_secs(1)).await;
        assert_eq!(limiters.check_request(alice, one), Ok(()));
        assert_eq!(limiters.check_start(alice, one), Ok(()));
    }

    // The clock works outside any runtime (tokio falls back to the system
    // clock), so a limiter used from plain threads does not panic.
    #[test]
    fn works_outside_a_runtime() {
        let limiters = Limiters::new();
        assert_eq!(
            limiters.check_request(identity(1), per_minute(1, 1)),
            Ok(())
        );
        let wait = limiters
            .check_request(identity(1), per_minute(1, 1))
            .unwrap_err();
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60));
    }

    // Handshake sources: IPv4 as is, IPv4-mapped IPv6 as the IPv4 address,
    // other IPv6 as the /64.
    #[test]
    fn source_normalisation() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(source_of(ip("::1")), ip("::"));
    }

    // Two addresses in one IPv6 /64 share a bucket; the next /64 has its own.
    #[tokio::test(start_paused = true)]
    async fn ipv6_slash64_shares_a_bucket() {
        let limiter = HandshakeLimiter::new();
        let r = per_second(2, 1);
        assert_eq!(limiter.check(ip("2001:db8:0:1::1"), r), Ok(()));
        assert_eq!(
            limiter.check(ip("2001:db8:0:1:ffff:ffff:ffff:ffff"), r),
            Err(Duration::from_millis(500))
        );
        assert_eq!(limiter.check(ip("2001:db8:0:2::1"), r), Ok(()));
        assert_eq!(limiter.len(), 2);
    }

    // A client connecting over IPv4 and over a dual-stack socket (as
    // ::ffff:a.b.c.d) is one source; a neighbouring IPv4 address is another.
    #[tokio::test(start_paused = true)]
    async fn mapped_ipv4_is_the_ipv4_address() {
        let limiter = HandshakeLimiter::new();
        let r = per_second(1, 1);
        assert_eq!(limiter.check(ip("192.0.2.7"), r), Ok(()));
        assert_eq!(
            limiter.check(ip("::ffff:192.0.2.7"), r),
            Err(Duration::from_secs(1))
        );
        assert_eq!(limiter.check(ip("192.0.2.8"), r), Ok(()));
        let peer: SocketAddr = "[::ffff:192.0.2.8]:443".parse().unwrap();
        assert_eq!(limiter.check(peer.ip(), r), Err(Duration::from_secs(1)));
    }

    // Local users are counted by uid: each has its own bucket, apart from
    // each other and from every address (127.0.0.1 included).
    #[tokio::test(start_paused = true)]
    async fn each_local_user_has_its_own_bucket() {
        let limiter = HandshakeLimiter::new();
        let r = per_second(1, 1);
        assert_eq!(limiter.check(Source::LocalUser(1000), r), Ok(()));
        assert_eq!(
            limiter.check(Source::LocalUser(1000), r),
            Err(Duration::from_secs(1))
        );
        assert_eq!(limiter.check(Source::LocalUser(1001), r), Ok(()));
        assert_eq!(limiter.check(ip("127.0.0.1"), r), Ok(()));
        assert_eq!(limiter.len(), 3);
    }

    // No handshake rate: always passes, and the buckets of an earlier rate
    // are dropped; a new rate starts every source full.
    #[tokio::test(start_paused = true)]
    async fn handshake_rate_none_and_change() {
        let limiter = HandshakeLimiter::new();
        let a = ip("192.0.2.1");
        assert_eq!(limiter.check(a, per_second(1, 1)), Ok(()));
        assert_eq!(
            limiter.check(a, per_second(1, 1)),
            Err(Duration::from_secs(1))
        );
        // Same rate: same state.
        assert_eq!(
            limiter.check(a, per_second(1, 1)),
            Err(Duration::from_secs(1))
        );
        // New rate: fresh bucket.
        assert_eq!(limiter.check(a, per_second(1, 2)), Ok(()));
        assert_eq!(limiter.check(a, per_second(1, 2)), Ok(()));
        assert_eq!(
            limiter.check(a, per_second(1, 2)),
            Err(Duration::from_secs(1))
        );
        for _ in 0..100 {
            assert_eq!(limiter.check(a, None), Ok(()));
        }
        assert_eq!(limiter.len(), 0);
    }

    fn flood_source(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    // A flood from 4095 distinct addresses, then quiet until their buckets
    // are full again: the next new source reaches the sweep size, and only
    // its own bucket is left.
    #[tokio::test(start_paused = true)]
    async fn flood_is_forgotten_once_buckets_refill() {
        let limiter = HandshakeLimiter::new();
        let r = per_second(10, 5);
        for n in 0..HANDSHAKE_SWEEP_AT as u32 - 1 {
            assert_eq!(limiter.check(flood_source(n), r), Ok(()));
        }
        assert_eq!(limiter.len(), HANDSHAKE_SWEEP_AT - 1);
        // Each flood bucket is one token down; 100 ms refills it, and
        // governor drops a bucket one refill interval after it is full.
        advance(Duration::from_millis(200)).await;
        assert_eq!(limiter.check(ip("192.0.2.1"), r), Ok(()));
        assert_eq!(limiter.len(), 1);
    }

    // A sweep keeps every bucket that is not full: a flooding source that
    // has spent its burst stays refused across the sweep, and the next sweep
    // waits until the map has doubled.
    #[tokio::test(start_paused = true)]
    async fn sweep_keeps_spent_buckets() {
        let limiter = HandshakeLimiter::new();
        let r = per_second(1, 1);
        let spent = ip("192.0.2.1");
        assert_eq!(limiter.check(spent, r), Ok(()));
        for n in 0..HANDSHAKE_SWEEP_AT as u32 {
            assert_eq!(limiter.check(flood_source(n), r), Ok(()));
        }
        // The sweep ran at 4096 and dropped nothing: every bucket is spent.
        assert_eq!(limiter.len(), HANDSHAKE_SWEEP_AT + 1);
        assert_eq!(limiter.check(spent, r), Err(Duration::from_secs(1)));
        let sweep_at = limiter.state.lock().unwrap().as_ref().map(|h| h.sweep_at);
        assert_eq!(sweep_at, Some(2 * HANDSHAKE_SWEEP_AT));
    }
}
