//! `acl explain`: a permission decision in words, with the rule that made it.

use super::permissions::{Decision, Permissions, Reason, Rule};
use super::rules::AclRules;

/// What to explain.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Publish(&'a str),
    Subscribe {
        subject: &'a str,
        queue: Option<&'a str>,
    },
}

/// The answer: the decision and its explanation, one fact per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub allowed: bool,
    pub lines: Vec<String>,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn reason_text(reason: &Reason<'_>) -> String {
    match reason {
        Reason::NoRestrictions => "no permissions of this kind restrict it".into(),
        Reason::AllowedBy(rule) => format!("allow entry {rule}"),
        Reason::NotDenied => "no allow list, and no deny entry matches".into(),
        Reason::NotInAllowList => "no allow entry matches".into(),
        Reason::QueueNotAllowed(rule) => {
            format!("the matching allow entry {rule} names other queue groups")
        }
        Reason::DeniedBy(rule) => format!("deny entry {rule}"),
        Reason::ReservedQueue => "the queue group `_sys_` is reserved by nats-server".into(),
    }
}

/// Explains what `user` (or an unnamed client, with `None`) may do.
pub fn explain(rules: &AclRules, user: Option<&str>, action: Action<'_>) -> Explanation {
    let mut lines = Vec::new();
    let named = user.and_then(|u| rules.user(u));
    let perms: Option<&Permissions> = rules.permissions_for(user).map(|p| &**p);
    match (user, named) {
        (Some(name), Some(u)) if u.permissions.is_some() => {
            lines.push(format!("user: {name} (permissions at {})", u.origin))
        }
        (Some(name), Some(u)) => lines.push(format!(
            "user: {name} (defined at {}, without permissions of its own)",
            u.origin
        )),
        (Some(name), None) => lines.push(format!("user: {name} (not in the rule files)")),
        (None, _) => lines.push("user: (none presented)".into()),
    }
    // With none, every subject is allowed; `_sys_` is still refused.
    let unrestricted = Permissions::default();
    let perms = match perms {
        Some(perms) => {
            if named.is_none_or(|u| u.permissions.is_none()) {
                lines.push("permissions: default_permissions".into());
            }
            perms
        }
        None => {
            lines.push("permissions: none apply".into());
            &unrestricted
        }
    };
    let (what, decision): (String, Decision<'_>) = match action {
        Action::Publish(subject) => (
            format!("publish {subject}"),
            perms.check_publish(subject.as_bytes()),
        ),
        Action::Subscribe { subject, queue } => (
            match queue {
                Some(q) => format!("subscribe {subject} (queue {q})"),
                None => format!("subscribe {subject}"),
            },
            perms.check_subscribe(subject.as_bytes(), queue.map(str::as_bytes)),
        ),
    };
    let verdict = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    lines.push(format!(
        "{what}: {verdict}: {}",
        reason_text(&decision.reason)
    ));
    match action {
        Action::Publish(_) if !decision.allowed && perms.responses.is_some() => {
            lines.push(
                "allow_responses: still allowed as an answer to a reply subject the client received"
                    .into(),
            );
        }
        Action::Subscribe { subject, queue } if decision.allowed => {
            let queue = queue.map(str::as_bytes);
            if perms.needs_delivery_filter(subject.as_bytes(), queue) {
                // A deny entry with a queue group filters only that group's deliveries.
                let filters_this = |rule: &Rule| {
                    rule.queue.is_none() || queue.is_some_and(|q| rule.names_group(q))
                };
                for rule in &perms.subscribe.deny {
                    if filters_this(rule)
                        && super::matching::subjects_collide(
                            rule.subject.as_bytes(),
                            subject.as_bytes(),
                        )
                    {
                        lines.push(format!(
                            "deliveries matching deny entry {rule} are filtered out"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Explanation {
        allowed: decision.allowed,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the deny entries that would drop this subscription's deliveries are named: a
    /// deny entry with a queue group filters that group's, as nats-server's `checkDenySub`.
    #[test]
    fn deliveries_filtered_only_by_the_entries_that_apply() {
        let rules = AclRules::from_str(
            "rules.toml",
            "[[users]]\nuser = \"u\"\n[users.permissions]\n\
             subscribe = { deny = [\"jobs.secret\", \"jobs.a bad\"] }\n",
        )
        .unwrap();
        let filtered = |subject, queue| {
            let action = Action::Subscribe { subject, queue };
            explain(&rules, Some("u"), action)
                .lines
                .into_iter()
                .filter(|l| l.starts_with("deliveries matching"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let plain = filtered("jobs.*", None);
        assert!(plain.contains("\"jobs.secret\""), "{plain}");
        assert!(!plain.contains("bad"), "{plain}");
        let good = filtered("jobs.*", Some("good"));
        assert!(
            good.contains("\"jobs.secret\"") && !good.contains("bad"),
            "{good}"
        );
        let bad = filtered("jobs.*", Some("bad"));
        assert!(bad.contains("\"jobs.a bad\""), "{bad}");
    }

    /// With no permissions at all, everything is allowed but the `_sys_` queue group, as
    /// nats-server refuses it to every client.
    #[test]
    fn no_permissions_allow_all_but_the_system_queue() {
        let rules = AclRules::from_str("rules.toml", "[[users]]\nuser = \"u\"\npassword = \"p\"\n")
            .unwrap();
        let sub = |queue| {
            let action = Action::Subscribe {
                subject: "orders.x",
                queue,
            };
            explain(&rules, Some("u"), action)
        };
        let plain = sub(None);
        assert!(plain.allowed);
        assert!(
            plain.lines.iter().any(|l| l == "permissions: none apply"),
            "{:?}",
            plain.lines
        );
        assert!(sub(Some("workers")).allowed);
        let system = sub(Some("_sys_"));
        assert!(!system.allowed);
        assert!(
            system
                .lines
                .last()
                .is_some_and(|l| l.ends_with("is reserved by nats-server")),
            "{:?}",
            system.lines
        );
    }
}
