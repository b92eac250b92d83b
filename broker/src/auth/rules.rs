//! Permissions: which user may do which operation on which topics.
//!
//! A rule grants a user operations on a topic-name pattern: a name (`orders`), a prefix
//! ending in `*` (`orders.*` matches `orders.eu` and `orders.us.west`, not `orders`), or
//! `*` for every topic. With authentication on, what no rule grants is denied, and
//! administrators may do everything. As in Kafka, `publish`, `consume` and `delete` on a
//! topic imply `describe` on it: a producer must learn a topic's partitions, a consumer
//! its offsets. `consume` covers a topic's groups (joining,
//! committing, subscribing, answering, and creating, resetting and deleting its groups);
//! `admin` covers users, tokens and rules.

use std::fmt;
use std::str::FromStr;

/// What a request does, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    Publish,
    Consume,
    Describe,
    Create,
    Delete,
    Admin,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Publish,
        Operation::Consume,
        Operation::Describe,
        Operation::Create,
        Operation::Delete,
        Operation::Admin,
    ];

    /// Whether a rule granting `self` allows `asked`: itself, and `describe` for
    /// `publish`, `consume` and `delete`.
    pub fn grants(self, asked: Operation) -> bool {
        use Operation::*;
        self == asked || (asked == Describe && matches!(self, Publish | Consume | Delete))
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Consume => "consume",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Admin => "admin",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(text: &str) -> Result<Operation, String> {
        Operation::ALL
            .into_iter()
            .find(|op| op.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Operation::ALL.iter().map(|op| op.name()).collect();
                format!("{text:?} is not an operation (one of {})", names.join(", "))
            })
    }
}

/// A topic-name pattern: `name`, `prefix*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Checks `text` is a pattern: a topic name's characters (`[A-Za-z0-9._-]`), with at
    /// most one `*`, at its end.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let body = text.strip_suffix('*').unwrap_or(text);
        let valid = !text.is_empty()
            && text.len() <= 200
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            Ok(Pattern(text.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a topic pattern: a topic name, a prefix ending in *, or *"
            ))
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        covers(&self.0, Some(topic))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a rule on (valid) `pattern` covers `topic`; an operation on no topic (listing,
/// administration) is covered only by `*`.
pub fn covers(pattern: &str, topic: Option<&str>) -> bool {
    let Some(topic) = topic else {
        return pattern == "*";
    };
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            prefix.is_empty() || (topic.len() > prefix.len() && topic.starts_with(prefix))
        }
        None => pattern == topic,
    }
}

/// One rule: operations on a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    pub operations: Vec<Operation>,
}

/// What one user may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub admin: bool,
    pub rules: Vec<Rule>,
}

impl Permissions {
    /// Whether `operation` on `topic` is allowed (`topic` is `None` for operations on no
    /// topic: listing, and administering users, tokens and rules).
    pub fn allows(&self, operation: Operation, topic: Option<&str>) -> bool {
        if self.admin {
            return true;
        }
        self.rules.iter().any(|rule| {
            rule.operations
                .iter()
                .any(|granted| granted.grants(operation))
                && covers(rule.pattern.as_str(), topic)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, operations: &[Operation]) -> Rule {
        Rule {
            pattern: Pattern::parse(pattern).unwrap(),
            operations: operations.to_vec(),
        }
    }

    #[test]
    fn patterns_match_a_name_a_prefix_or_everything() {
        let exact = Pattern::parse("orders").unwrap();
        assert!(exact.matches("orders") && !exact.matches("orders.eu") && !exact.matches("order"));
        let prefix = Pattern::parse("orders.*").unwrap();
        assert!(prefix.matches("orders.eu") && prefix.matches("orders.us.west"));
        assert!(
            !prefix.matches("orders") && !prefix.matches("orders.") && !prefix.matches("ordersx")
        );
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches("anything") && all.matches("orders"));
        for bad in ["", "a*b", "**", "or ders", "*orders", "orders/eu"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn what_no_rule_grants_is_denied_and_administrators_may_do_everything() {
        use Operation::*;
        let alice = Permissions {
            admin: false,
            rules: vec![
                rule("orders.*", &[Publish, Describe]),
                rule("audit", &[Consume]),
            ],
        };
        assert!(alice.allows(Publish, Some("orders.eu")));
        assert!(alice.allows(Describe, Some("orders.eu")));
        assert!(
            alice.allows(Describe, Some("audit")),
            "consume implies describe"
        );
        assert!(!alice.allows(Describe, Some("other")));
        assert!(
            !alice.allows(Consume, Some("orders.eu")),
            "publish implies only describe"
        );
        assert!(!alice.allows(Consume, Some("orders.eu")));
        assert!(!alice.allows(Publish, Some("audit")));
        assert!(alice.allows(Consume, Some("audit")));
        assert!(!alice.allows(Delete, Some("orders.eu")));
        assert!(!alice.allows(Admin, None));
        assert!(!Permissions::default().allows(Describe, Some("orders")));
        let ops = Permissions {
            admin: false,
            rules: vec![rule("*", &[Describe, Admin])],
        };
        assert!(ops.allows(Describe, Some("x")) && ops.allows(Admin, None));
        let root = Permissions {
            admin: true,
            rules: vec![],
        };
        assert!(Operation::ALL.iter().all(|op| root.allows(*op, Some("x"))));
    }

    #[test]
    fn operations_parse_by_name_and_name_the_choices_when_wrong() {
        assert_eq!("consume".parse(), Ok(Operation::Consume));
        let err = "read".parse::<Operation>().unwrap_err();
        assert!(
            err.contains("publish, consume, describe, create, delete, admin"),
            "{err}"
        );
    }
}
