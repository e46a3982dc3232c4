//! The services shipped with flotilla.

pub mod accounts;
pub mod echo;
pub mod kv;

use crate::catalogue::Catalogue;

impl Catalogue {
    /// The services shipped with flotilla: `accounts`, `echo` and `kv`.
    pub fn builtin() -> Catalogue {
        Catalogue::empty()
            .with_own(accounts::Accounts)
            .with_own(echo::Echo)
            .with_own(kv::Kv)
    }
}
