//! Which key each request uses.

use super::options::KeyPattern;
use rand::Rng as _;
use rand::rngs::SmallRng;

/// The key for index `n`: `key:` and 12 digits, so every key has the same length.
pub fn write_key(n: u64, out: &mut Vec<u8>) {
    const WIDTH: usize = 12;
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    out.extend_from_slice(b"key:");
    out.extend(std::iter::repeat_n(
        b'0',
        WIDTH.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// Picks key indexes in `0..keys` by the configured pattern.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    Uniform {
        keys: u64,
    },
    /// Cumulative weights of ranks 1..=keys (rank 1 hottest), for inverse sampling.
    Zipf {
        cumulative: std::sync::Arc<[f64]>,
    },
    Sequential {
        keys: u64,
        next: u64,
    },
}

impl KeyChooser {
    /// `connection` of `connections` starts a sequential walk at its own offset.
    pub fn new(pattern: KeyPattern, keys: u64, connection: usize, connections: usize) -> Self {
        match pattern {
            KeyPattern::Uniform => Self::Uniform { keys },
            KeyPattern::Sequential => Self::Sequential {
                keys,
                next: keys * connection as u64 / connections.max(1) as u64,
            },
            KeyPattern::Zipf(exponent) => {
                let mut total = 0.0;
                let cumulative = (1..=keys)
                    .map(|rank| {
                        total += 1.0 / (rank as f64).powf(exponent);
                        total
                    })
                    .collect();
                Self::Zipf { cumulative }
            }
        }
    }

    /// The next key index.
    pub fn next(&mut self, rng: &mut SmallRng) -> u64 {
        match self {
            Self::Uniform { keys } => rng.random_range(0..*keys),
            Self::Sequential { keys, next } => {
                let n = *next;
                *next = (n + 1) % *keys;
                n
            }
            Self::Zipf { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(1.0);
                let target = rng.random::<f64>() * total;
                cumulative.partition_point(|&c| c < target) as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn keys_have_one_length() {
        let mut a = Vec::new();
        write_key(7, &mut a);
        assert_eq!(a, b"key:000000000007");
        for n in [0, 99_999, 123_456_789_012, 9_999_999_999_999, u64::MAX] {
            let mut got = Vec::new();
            write_key(n, &mut got);
            assert_eq!(got, format!("key:{n:012}").into_bytes());
        }
    }

    #[test]
    fn patterns_stay_in_the_key_space_and_have_their_shape() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut sequential = KeyChooser::new(KeyPattern::Sequential, 10, 1, 2);
        let walk: Vec<u64> = (0..7).map(|_| sequential.next(&mut rng)).collect();
        assert_eq!(walk, vec![5, 6, 7, 8, 9, 0, 1]);
        let mut zipf = KeyChooser::new(KeyPattern::Zipf(1.0), 1000, 0, 1);
        let mut uniform = KeyChooser::new(KeyPattern::Uniform, 1000, 0, 1);
        let (mut zipf_hot, mut uniform_hot) = (0, 0);
        for _ in 0..10_000 {
            let z = zipf.next(&mut rng);
            let u = uniform.next(&mut rng);
            assert!(z < 1000 && u < 1000);
            zipf_hot += u32::from(z < 10);
            uniform_hot += u32::from(u < 10);
        }
        // Ten hottest of 1000 keys: ~39% of zipf(1) draws, ~1% of uniform ones.
        assert!(
            zipf_hot > 3000 && uniform_hot < 300,
            "{zipf_hot} {uniform_hot}"
        );
    }
}
