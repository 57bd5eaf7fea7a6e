//! The guest's random numbers, for every process that runs guest code
//! (worker children, template processes and their copies, `exec`): the
//! generator behind `wasi:random` that each store is given.

/// The guest's random numbers (`wasi:random`, secure and insecure alike):
/// a ChaCha generator seeded from the kernel on first use in each process.
/// wasmtime-wasi's default is seeded when the store is made, so a forked
/// copy of the store would share its state with every other copy: jobs
/// copied from one template process would draw the same "random" bytes.
/// Here a copy calls [`reseed_guest_random`] once it exists, and every
/// generator reseeds at its next use.
pub(crate) struct GuestRandom {
    generation: u64,
    rng: Option<rand_wasi::rngs::StdRng>,
}

/// Bumped by [`reseed_guest_random`]; a generator that saw another value
/// reseeds.
static RANDOM_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Make every guest generator in this process reseed from the kernel at its
/// next use: call first thing in a process forked with stores in it.
pub(crate) fn reseed_guest_random() {
    RANDOM_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl GuestRandom {
    /// A generator that seeds itself at first use.
    pub(crate) fn new() -> Self {
        GuestRandom {
            generation: 0,
            rng: None,
        }
    }

    fn rng(&mut self) -> &mut rand_wasi::rngs::StdRng {
        use rand_wasi::SeedableRng;
        let now = RANDOM_GENERATION.load(std::sync::atomic::Ordering::Relaxed);
        if self.rng.is_none() || self.generation != now {
            self.generation = now;
            self.rng = Some(rand_wasi::rngs::StdRng::from_rng(
                &mut rand_wasi::rand_core::UnwrapErr(rand_wasi::rngs::SysRng),
            ));
        }
        self.rng.as_mut().expect("seeded above")
    }
}

impl rand_wasi::TryRng for GuestRandom {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand_wasi::Rng::next_u32(self.rng()))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand_wasi::Rng::next_u64(self.rng()))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        rand_wasi::Rng::fill_bytes(self.rng(), dest);
        Ok(())
    }
}
