//! Randomness for ids and tokens: a per-thread fastrand generator seeded once
//! from the operating system (through `uuid`'s v4 generator), so a message does
//! not cost a `getrandom` system call. Good for uniqueness (64 bits of state per
//! thread, seeded independently), not for secrets.

use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<fastrand::Rng> =
        RefCell::new(fastrand::Rng::with_seed(os_seed()));
}

fn os_seed() -> u64 {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    high ^ low.rotate_left(32)
}

/// Fills `out` with random bytes.
pub(crate) fn fill(out: &mut [u8]) {
    RNG.with(|r| r.borrow_mut().fill(out));
}

/// A random 128-bit number.
pub(crate) fn u128() -> u128 {
    RNG.with(|r| r.borrow_mut().u128(..))
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_get_different_streams() {
        let here = super::u128();
        let there = std::thread::spawn(super::u128).join().unwrap();
        assert_ne!(here, there);
        let mut a = [0u8; 16];
        super::fill(&mut a);
        assert_ne!(a, [0u8; 16]);
    }
}
