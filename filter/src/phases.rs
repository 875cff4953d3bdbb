//! Switches that turn single phases of the filter off, for the edge
//! benchmark's per-phase cost breakdown (`BENCH_BREAKDOWN=1 make bench-edge`).
//!
//! They exist only in a build with the `phase-switches` feature, which
//! accepts a `bench_skip` list in the configuration. The production build
//! has no such field (a configuration naming it is refused) and every
//! `skips` call is a constant `false` the compiler removes.

/// A phase of the per-request work that the breakdown can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Everything after reading the request headers: the request goes on untouched.
    AfterHeaderRead,
    /// The credential check and token-cache lookup (a fixed identity instead).
    Credentials,
    /// MCP transport rules: POST headers and routing headers against the body.
    McpRules,
    /// Holding the body and parsing it as JSON-RPC (and the checks that need it).
    Body,
    /// Metric host calls.
    Metrics,
    /// Removing credentials and writing the identity assertion header (it is still signed).
    IdentityHeaderWrites,
    /// The response-phase callbacks (output cap).
    Response,
}

impl Phase {
    #[cfg(feature = "phase-switches")]
    const ALL: [(&'static str, Phase); 7] = [
        ("after_header_read", Phase::AfterHeaderRead),
        ("credentials", Phase::Credentials),
        ("mcp_rules", Phase::McpRules),
        ("body", Phase::Body),
        ("metrics", Phase::Metrics),
        ("identity_header_writes", Phase::IdentityHeaderWrites),
        ("response", Phase::Response),
    ];
}

/// The phases switched off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Skips {
    #[cfg(feature = "phase-switches")]
    bits: u32,
}

impl Skips {
    /// Whether `phase` is switched off (never, without `phase-switches`).
    #[inline(always)]
    pub fn skips(&self, phase: Phase) -> bool {
        #[cfg(feature = "phase-switches")]
        {
            self.bits & (1 << phase as u32) != 0
        }
        #[cfg(not(feature = "phase-switches"))]
        {
            let _ = phase;
            false
        }
    }

    /// Parses `bench_skip` names.
    #[cfg(feature = "phase-switches")]
    pub fn from_names(names: &[String]) -> Result<Self, String> {
        let mut bits = 0;
        for name in names {
            let (_, phase) = Phase::ALL
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("`bench_skip`: unknown phase {name:?}"))?;
            bits |= 1 << *phase as u32;
        }
        Ok(Self { bits })
    }
}

#[cfg(all(test, feature = "phase-switches"))]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_their_phase_only() {
        let skips = Skips::from_names(&["metrics".into(), "response".into()]).unwrap();
        assert!(skips.skips(Phase::Metrics) && skips.skips(Phase::Response));
        assert!(!skips.skips(Phase::Body) && !skips.skips(Phase::Credentials));
        assert!(Skips::from_names(&["nope".into()]).is_err());
    }
}
