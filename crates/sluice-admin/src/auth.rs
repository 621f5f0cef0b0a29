//! Admin authentication: `Authorization: Bearer TOKEN`, checked against the SHA-256 of every
//! `[[admin.tokens]]` entry. All hashes are compared, each in constant time, whatever matched
//! first, so the time taken says nothing about which token (or how much of one) was right. The
//! matching token's name is the actor of the audit trail.

use crate::Admin;
use crate::error::AdminError;
use axum::extract::FromRequestParts;
use http::request::Parts;
use sha2::{Digest, Sha256};
use sluice_config::AdminToken;
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// An admin token as the gateway holds it: the name and the token's hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedToken {
    /// The `[[admin.tokens]]` name.
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// GET only.
    pub read_only: bool,
}

/// Turns `[[admin.tokens]]` into [`ResolvedToken`]s (reading `token_env` variables, which only
/// the binary does); an error string names the token and variable.
pub type TokenResolver =
    Arc<dyn Fn(&[AdminToken]) -> Result<Vec<ResolvedToken>, String> + Send + Sync>;

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Resolve tokens with `env` standing for the environment (the binary passes
/// `std::env::var`). Hex in `token_sha256` was checked by config validation.
pub fn resolve_tokens(
    tokens: &[AdminToken],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedToken>, String> {
    tokens
        .iter()
        .map(|t| {
            let sha256 = match (&t.token_env, &t.token_sha256) {
                (Some(var), _) => match env(var) {
                    Some(v) if !v.is_empty() => hash_token(&v),
                    _ => {
                        return Err(format!(
                            "admin token {:?}: environment variable {var} is not set",
                            t.name
                        ));
                    }
                },
                (None, Some(hex)) => parse_hex(hex)
                    .ok_or_else(|| format!("admin token {:?}: bad token_sha256", t.name))?,
                (None, None) => return Err(format!("admin token {:?} has no token", t.name)),
            };
            Ok(ResolvedToken {
                name: t.name.clone(),
                sha256,
                read_only: t.read_only,
            })
        })
        .collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Which token (if any) `presented` is: every entry is compared.
pub fn identify<'a>(tokens: &'a [ResolvedToken], presented: &str) -> Option<&'a ResolvedToken> {
    let h = hash_token(presented);
    let mut found = subtle::Choice::from(0);
    let mut index = 0u32;
    for (i, t) in tokens.iter().enumerate() {
        let eq = t.sha256.ct_eq(&h);
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        index.conditional_assign(&i, eq & !found);
        found |= eq;
    }
    if bool::from(found) {
        tokens.get(usize::try_from(index).ok()?)
    } else {
        None
    }
}

/// The authenticated caller of an admin route.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The token's name.
    pub name: String,
    /// GET only.
    pub read_only: bool,
}

impl Actor {
    /// Refuse a change by a read-only token.
    pub fn may_write(&self) -> Result<(), AdminError> {
        if self.read_only {
            return Err(AdminError::Forbidden(format!(
                "admin token {:?} is read-only",
                self.name
            )));
        }
        Ok(())
    }
}

impl FromRequestParts<Admin> for Actor {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, AdminError> {
        let Some(v) = parts.headers.get(http::header::AUTHORIZATION) else {
            return Err(AdminError::Unauthenticated(
                "missing admin token: send Authorization: Bearer <token>".into(),
            ));
        };
        let token = v
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                AdminError::Unauthenticated(
                    "malformed Authorization header: use Bearer <token>".into(),
                )
            })?;
        let tokens = admin.reloader().tokens();
        match identify(&tokens, token) {
            Some(t) => Ok(Actor {
                name: t.name.clone(),
                read_only: t.read_only,
            }),
            None if tokens.is_empty() => Err(AdminError::Unauthenticated(
                "no admin tokens are configured ([[admin.tokens]])".into(),
            )),
            None => Err(AdminError::Unauthenticated("invalid admin token".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn tok(name: &str, env: Option<&str>, sha: Option<String>) -> AdminToken {
        AdminToken {
            name: name.into(),
            token_env: env.map(Into::into),
            token_sha256: sha,
            read_only: false,
        }
    }

    #[test]
    fn tokens_resolve_and_identify_by_hash() {
        let hex: String = hash_token("beta")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let specs = [tok("a", Some("TOK_A"), None), tok("b", None, Some(hex))];
        let env = |v: &str| (v == "TOK_A").then(|| "alpha".to_owned());
        let r = resolve_tokens(&specs, env).unwrap();
        assert_eq!(identify(&r, "alpha").unwrap().name, "a");
        assert_eq!(identify(&r, "beta").unwrap().name, "b");
        assert!(identify(&r, "gamma").is_none());
        assert!(identify(&[], "alpha").is_none());
        let err = resolve_tokens(&[tok("c", Some("UNSET"), None)], env).unwrap_err();
        assert!(err.contains("UNSET"), "{err}");
    }
}
