//! When the listeners' certificates expire: a warning when one is loaded (start, every reload,
//! `weir check`) that has expired or expires within [`WARN_WITHIN_DAYS`], and the metric
//! `weir_tls_certificate_expiration_timestamp_seconds{listener,certificate}` to alert on
//! (`… - time() < 14 * 86400`), as cert-manager names it. A certificate's date is the earliest
//! `notAfter` of its chain: an intermediate that expires first breaks clients as surely.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use rustls::pki_types::CertificateDer;

/// Days before its expiry from which a loaded certificate is warned about.
pub const WARN_WITHIN_DAYS: i64 = 14;

/// The certificates a listener serves (`default`, or the SNI name) and their expiry.
type Served = Vec<(String, i64)>;

/// Per listener: what its last built TLS config (by address) would serve, until applied.
static BUILT: LazyLock<Mutex<HashMap<String, (usize, Served)>>> = LazyLock::new(Default::default);
/// Per listener: what it serves.
static SERVING: LazyLock<Mutex<HashMap<String, Served>>> = LazyLock::new(Default::default);

/// Notes the certificates of a TLS config just built for `listener` (`config`: its address)
/// and warns about those expired or close to it. They count as served once [`serve`] says the
/// config is: a reload refused for another reason leaves the served ones as they were. `now`
/// in Unix seconds.
pub fn built(listener: &str, config: usize, certificates: &[(&str, &[CertificateDer<'static>])], now: i64) {
    let mut dates = Vec::with_capacity(certificates.len());
    for (name, chain) in certificates {
        let Some(not_after) = earliest_not_after(chain) else {
            continue;
        };
        let days = (not_after - now).div_euclid(86_400);
        if not_after <= now {
            tracing::warn!(listener, certificate = name, not_after = %date(not_after), "TLS certificate has expired: clients will refuse it");
        } else if days < WARN_WITHIN_DAYS {
            tracing::warn!(listener, certificate = name, not_after = %date(not_after), days, "TLS certificate expires soon");
        }
        dates.push((name.to_string(), not_after));
    }
    if let Ok(mut built) = BUILT.lock() {
        built.insert(listener.to_string(), (config, dates));
    }
}

/// `listener` now serves the config at `config` (built by [`built`]).
pub fn serve(listener: &str, config: usize) {
    let dates = match BUILT.lock() {
        Ok(mut built) => match built.remove(listener) {
            Some((at, dates)) if at == config => dates,
            Some(other) => {
                built.insert(listener.to_string(), other);
                return;
            }
            None => return,
        },
        Err(_) => return,
    };
    if let Ok(mut serving) = SERVING.lock() {
        serving.insert(listener.to_string(), dates);
    }
}

/// Every recorded certificate of the listeners `keep` says are current: (listener,
/// certificate, expiry in Unix seconds).
pub fn dates(keep: impl Fn(&str) -> bool) -> Vec<(String, String, i64)> {
    let Ok(serving) = SERVING.lock() else {
        return Vec::new();
    };
    serving
        .iter()
        .filter(|(listener, _)| keep(listener))
        .flat_map(|(listener, certs)| {
            certs
                .iter()
                .map(move |(name, at)| (listener.clone(), name.clone(), *at))
        })
        .collect()
}

/// The earliest `notAfter` of `chain`'s certificates that parse, in Unix seconds.
fn earliest_not_after(chain: &[CertificateDer<'static>]) -> Option<i64> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
}

/// `at` (Unix seconds) as a date for the log.
fn date(at: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chain(not_after: (i32, u8, u8)) -> Vec<CertificateDer<'static>> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        vec![params.self_signed(&key).unwrap().der().clone()]
    }

    #[test]
    fn the_earliest_date_of_a_chain_counts_once_its_config_serves() {
        let (late, early) = (chain((2040, 1, 1)), chain((2030, 6, 1)));
        let both: Vec<_> = late.iter().chain(&early).cloned().collect();
        built("l1", 1, &[("default", &late), ("api.test", &both)], 0);
        assert!(dates(|l| l == "l1").is_empty(), "built, not served yet");
        serve("l1", 1);
        let mut got = dates(|l| l == "l1");
        got.sort();
        assert_eq!(
            got,
            vec![
                ("l1".to_string(), "api.test".to_string(), 1_906_502_400),
                ("l1".to_string(), "default".to_string(), 2_208_988_800),
            ]
        );
        // A listener no longer current is left out; a config built but never served (a
        // refused reload) changes nothing; the next served one replaces the old.
        assert!(dates(|l| l == "other").is_empty());
        built("l1", 2, &[("default", &early)], 0);
        serve("l1", 3);
        assert_eq!(dates(|l| l == "l1").len(), 2);
        built("l1", 4, &[("default", &early)], 0);
        serve("l1", 4);
        assert_eq!(
            dates(|l| l == "l1"),
            vec![("l1".to_string(), "default".to_string(), 1_906_502_400)]
        );
        assert_eq!(date(1_906_502_400), "Jun  1 00:00:00 2030 +00:00");
    }
}
