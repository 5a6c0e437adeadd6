//! `least-request`: power-of-N-choices on in-flight requests (`{ choices = 2 }`), with the
//! EWMA latency as the tie-break. Picks N distinct eligible endpoints at random and keeps the
//! least loaded: near-optimal balance without scanning every endpoint.

use weir_plugin_sdk::*;

struct LeastRequest {
    choices: usize,
}

/// Among `candidates`, the one with the fewest in-flight requests, then the lowest latency.
pub fn least_loaded(candidates: &[usize], in_flight: &[u32], ewma: &[u32]) -> Option<usize> {
    candidates.iter().copied().min_by_key(|&i| {
        (
            in_flight.get(i).copied().unwrap_or(u32::MAX),
            ewma.get(i).copied().unwrap_or(u32::MAX),
        )
    })
}

/// Up to `n` distinct indexes from `eligible`, drawn with `random`, in random order: the
/// first of equally loaded candidates wins, which must not always be the same endpoint.
pub fn sample(eligible: &[usize], n: usize, mut random: impl FnMut() -> u64) -> Vec<usize> {
    if eligible.len() <= n {
        let mut all = eligible.to_vec();
        let k = (random() % all.len().max(1) as u64) as usize;
        all.rotate_left(k);
        return all;
    }
    let mut pool = eligible.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = (random() % pool.len() as u64) as usize;
        out.push(pool.swap_remove(k));
    }
    out
}

impl Plugin for LeastRequest {
    const NAME: &'static str = "least-request";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["choices"])?;
        let choices = config.u64_or("choices", 2)?;
        if !(1..=16).contains(&choices) {
            return Err(format!("`choices` must be between 1 and 16, got {choices}"));
        }
        Ok(LeastRequest {
            choices: choices as usize,
        })
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            wants_load: true,
            ..Manifest::default()
        }
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        let n = pool.health.len();
        let mut eligible_now: Vec<usize> = (0..n).filter(|&i| eligible(&pool, &key, i)).collect();
        if eligible_now.is_empty() {
            eligible_now = (0..n).filter(|&i| healthy(&pool, i)).collect();
        }
        let candidates = sample(&eligible_now, self.choices, host::random_u64);
        match least_loaded(&candidates, &pool.in_flight, &pool.ewma_latency_us) {
            Some(i) => SelectDecision::Endpoint(i as u32),
            None => SelectDecision::Unavailable,
        }
    }
}

plugin!(LeastRequest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_least_loaded_then_the_fastest() {
        assert_eq!(least_loaded(&[0, 1, 2], &[5, 1, 3], &[0, 0, 0]), Some(1));
        assert_eq!(least_loaded(&[0, 1], &[2, 2], &[900, 100]), Some(1));
        assert_eq!(least_loaded(&[], &[], &[]), None);
    }

    #[test]
    fn samples_distinct() {
        let mut x = 7u64;
        let s = sample(&[3, 4, 5, 6], 2, || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            x >> 33
        });
        assert_eq!(s.len(), 2);
        assert_ne!(s[0], s[1]);
        assert_eq!(sample(&[1], 2, || 0), vec![1]);
        assert_eq!(sample(&[], 2, || 3), Vec::<usize>::new());
        // Fewer eligible than choices: all of them, starting anywhere.
        assert_eq!(sample(&[4, 5, 6], 3, || 0), vec![4, 5, 6]);
        assert_eq!(sample(&[4, 5, 6], 3, || 4), vec![5, 6, 4]);
    }
}
