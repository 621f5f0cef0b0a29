//! Which members may serve a call: the primary step (the requested model on the members that
//! take traffic and serve it), then the model's fallback chain. Resolved once per config into
//! member bitmasks, so a call's route costs a map lookup and no allocation.

use sluice_core::Provider;
use smallvec::SmallVec;
use std::collections::HashMap;

/// A call's route: inline for the primary and up to three fallback steps, so routing a call
/// allocates nothing in the common case.
pub type Steps<'a> = SmallVec<[Step<'a>; 4]>;

/// The most members a pool may have (eligibility is a 64-bit mask).
pub const MAX_MEMBERS: usize = 64;

/// One step of a fallback chain, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepSpec {
    /// Another model; `None` keeps the requested one.
    pub model: Option<String>,
    /// Only members of this provider.
    pub provider: Option<Provider>,
    /// Only this member (by name).
    pub member: Option<String>,
}

/// A step of a call's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// 0 for the primary, then 1, 2, … along the fallback chain.
    pub index: u8,
    /// The model (by its client-facing name) this step asks for.
    pub model: &'a str,
    /// Bit `i` set: member `i` may serve this step.
    pub eligible: u64,
}

/// What the route needs to know of a member.
#[derive(Debug, Clone)]
pub(crate) struct MemberFacts {
    pub name: String,
    pub provider: Provider,
    /// Takes primary traffic (weight > 0); a standby serves only fallback steps.
    pub active: bool,
    /// The models it serves; `None`: every model, under its own name.
    pub models: Option<HashMap<String, String>>,
}

impl MemberFacts {
    pub(crate) fn serves(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains_key(model))
    }
}

/// The resolved chains.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    members: Vec<MemberFacts>,
    chains: HashMap<String, Vec<StepSpec>>,
    default_chain: Vec<StepSpec>,
    /// Members of the Anthropic API: the only ones for batches and models.
    anthropic: u64,
}

impl Routes {
    pub(crate) fn new(members: Vec<MemberFacts>, fallbacks: Vec<(String, Vec<StepSpec>)>) -> Self {
        let mut chains = HashMap::new();
        let mut default_chain = Vec::new();
        for (model, steps) in fallbacks {
            if model == "*" {
                default_chain = steps;
            } else {
                chains.insert(model, steps);
            }
        }
        let anthropic = mask(&members, |m| m.provider == Provider::Anthropic);
        Self {
            members,
            chains,
            default_chain,
            anthropic,
        }
    }

    /// Members that may serve calls of endpoints other than Messages and token counting.
    pub(crate) fn anthropic(&self) -> u64 {
        self.anthropic
    }

    pub(crate) fn member(&self, i: usize) -> Option<&MemberFacts> {
        self.members.get(i)
    }

    /// The route of a Messages call (or a token count, `counting`) for `model`. Bedrock has no
    /// token counting endpoint here, so its members are left out of counting routes.
    pub(crate) fn steps<'a>(&'a self, model: &'a str, counting: bool) -> Steps<'a> {
        let usable = |m: &MemberFacts| !(counting && m.provider == Provider::Bedrock);
        let mut out = Steps::new();
        out.push(Step {
            index: 0,
            model,
            eligible: mask(&self.members, |m| m.active && usable(m) && m.serves(model)),
        });
        for (i, spec) in self.chain(model).iter().enumerate() {
            let step_model = spec.model.as_deref().unwrap_or(model);
            let eligible = mask(&self.members, |m| {
                usable(m)
                    && m.serves(step_model)
                    && spec.provider.is_none_or(|p| p == m.provider)
                    && spec.member.as_deref().is_none_or(|n| n == m.name)
            });
            out.push(Step {
                index: u8::try_from(i + 1).unwrap_or(u8::MAX),
                model: step_model,
                eligible,
            });
        }
        out
    }

    fn chain(&self, model: &str) -> &[StepSpec] {
        self.chains.get(model).unwrap_or(&self.default_chain)
    }
}

fn mask(members: &[MemberFacts], f: impl Fn(&MemberFacts) -> bool) -> u64 {
    members
        .iter()
        .take(MAX_MEMBERS)
        .enumerate()
        .filter(|(_, m)| f(m))
        .fold(0, |acc, (i, _)| acc | (1 << i))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn member(name: &str, provider: Provider, active: bool, models: &[&str]) -> MemberFacts {
        MemberFacts {
            name: name.into(),
            provider,
            active,
            models: (!models.is_empty()).then(|| {
                models
                    .iter()
                    .map(|m| ((*m).to_owned(), format!("{m}-id")))
                    .collect()
            }),
        }
    }

    #[test]
    fn primary_then_chain_with_standbys_only_in_fallbacks() {
        let routes = Routes::new(
            vec![
                member("a", Provider::Anthropic, true, &[]),
                member("b", Provider::Anthropic, true, &[]),
                member("br", Provider::Bedrock, false, &["opus", "sonnet"]),
                member("vx", Provider::Vertex, false, &["sonnet"]),
            ],
            vec![
                (
                    "opus".into(),
                    vec![
                        StepSpec {
                            provider: Some(Provider::Bedrock),
                            ..StepSpec::default()
                        },
                        StepSpec {
                            model: Some("sonnet".into()),
                            ..StepSpec::default()
                        },
                    ],
                ),
                (
                    "*".into(),
                    vec![StepSpec {
                        member: Some("vx".into()),
                        ..StepSpec::default()
                    }],
                ),
            ],
        );
        let s = routes.steps("opus", false);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].model, s[0].eligible), ("opus", 0b0011));
        assert_eq!((s[1].model, s[1].eligible), ("opus", 0b0100));
        // Another model: every member serving it, standbys included.
        assert_eq!(
            (s[2].index, s[2].model, s[2].eligible),
            (2, "sonnet", 0b1111)
        );
        // The default chain; vx does not serve haiku, so that step is empty.
        let s = routes.steps("haiku", false);
        assert_eq!(s[1].eligible, 0);
        assert_eq!(routes.steps("sonnet", false)[1].eligible, 0b1000);
        // Bedrock does not count tokens.
        assert_eq!(routes.steps("opus", true)[1].eligible, 0);
        assert_eq!(routes.anthropic(), 0b0011);
    }
}
