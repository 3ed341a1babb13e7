//! The built-in system contracts that are more than a table update: campaign (with the
//! admission proofs it checks) and the PDash private-trade flow. Proxy register, RPT and
//! register-contract calls are simple enough to live in the executor.

pub mod admission;
pub(crate) mod campaign;
pub(crate) mod pdash;

pub use campaign::{MAX_CAMPAIGN_TERMS, MIN_CAMPAIGN_DEPOSIT, SEED_MAX_AGE};
