//! Inbound identity: who is calling. API keys in the recognisable `pcl_<id>_<secret>` format,
//! stored only as an HMAC-SHA256 under a pepper from the vault and verified from memory in
//! constant time; and the brute-force guard that locks out sources of repeated failures.

mod api_key;
mod brute_force;
mod jwt;
mod oauth;

pub use api_key::{parse_key, ApiKeys, IssuedKey, KeyError, KeyInfo, Verified, KEY_PREFIX};
pub use brute_force::BruteForce;
pub use jwt::{JwtClaims, JwtError, JwtVerifier};
pub use oauth::{OAuthError, TokenIssuer};

#[cfg(test)]
mod consumer_names {
    /// The vault refuses consumers it does not list; the identity crate's own must be listed.
    #[test]
    fn the_vault_accepts_the_consumers_of_identitys_own_secrets() {
        for c in [
            crate::api_key::PEPPER_CONSUMER,
            crate::oauth::SIGNING_CONSUMER,
        ] {
            assert!(portcullis_vault::check_consumer(c).is_ok(), "{c}");
        }
    }
}
