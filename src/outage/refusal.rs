//! Why the brokers refuse the bridge when they answer: the `cause` an outage
//! line names.

/// Why the brokers do not let the bridge in, when they answer but refuse it:
/// the fix is then the bridge's configuration (or the cluster's), not the
/// network. Named in the outage lines' `cause` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The broker refused the credentials (SASL: a wrong user name or
    /// password, a mechanism the listener does not offer).
    Authentication,
    /// The TLS handshake failed: the broker's certificate is not signed by a
    /// trusted CA or not for the host name connected to, or the broker refused
    /// the client's certificate.
    Tls,
    /// The broker let the bridge in but refuses its principal the topic's
    /// metadata (no `Describe` ACL on it), or, counted by the publisher, a
    /// write (no `Write` ACL).
    Authorization,
}

impl Refusal {
    /// The refusal a librdkafka error event (its error code, as the metrics
    /// label it, and its reason) stands for, if any. A broker that refuses
    /// the client's certificate ends the handshake with a TLS alert, which
    /// librdkafka reports as a transport failure quoting the alert (`SSL
    /// alert number 42`, bad certificate): librdkafka's words are the only
    /// sign of it.
    pub fn of(code: &str, reason: &str) -> Option<Self> {
        match code {
            "Authentication" | "SaslAuthenticationFailed" => Some(Self::Authentication),
            "SSL" => Some(Self::Tls),
            "BrokerTransportFailure" if reason.contains("SSL alert") => Some(Self::Tls),
            _ => None,
        }
    }

    /// The name the log lines give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Tls => "tls",
            Self::Authorization => "authorization",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kafka_refusals` is exposed at 0 for each cause, so that an alert sees
    /// the first of any of them.
    #[test]
    fn every_cause_is_a_refusal_counted_from_the_start() {
        for refusal in [
            Refusal::Authentication,
            Refusal::Tls,
            Refusal::Authorization,
        ] {
            assert!(
                crate::metrics::KAFKA_REFUSAL_CAUSES.contains(&refusal.name()),
                "{refusal:?}"
            );
        }
    }
}
