//! `nats-edge explain`: what the edge would do with one subject for one user, section by
//! section (ACL, tagging, rewrite), without starting anything. Each policy filter adds a
//! section, so the output reads in pipeline order.

use std::fmt;

use nats_edge_filters::acl::explain::{explain as explain_acl, Action};
use nats_edge_filters::acl::rules::{AclRules, RulesError};
use nats_edge_filters::rewrite::{self, LoadedSets, RuleError};
use nats_edge_filters::tag::TagError;

use crate::config::{AuthModeConfig, Config};

/// Which op the subject travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainOp {
    Pub,
    Sub,
}

/// What to explain.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// The user the session would be authenticated as.
    pub user: Option<String>,
    /// The listener it would connect to; the first one when unset.
    pub listener: Option<String>,
    pub op: ExplainOp,
    pub subject: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("auth.rules: {0}")]
    Acl(#[from] RulesError),
    #[error("{0}")]
    Rewrite(#[from] RuleError),
    #[error("tagging.file: {0}")]
    Tagging(#[from] TagError),
    #[error("no listener is called `{0}`")]
    UnknownListener(String),
}

/// One titled block of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub title: &'static str,
    pub lines: Vec<String>,
}

/// The answer, in pipeline order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub sections: Vec<Section>,
}

impl Report {
    pub fn section(&self, title: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.title == title)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, section) in self.sections.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "[{}]", section.title)?;
            for line in &section.lines {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Why the edge (`edge` mode) would refuse a client that logs in as `name` on `listener`,
/// whatever credentials it presents, as `authenticate` decides: an unknown user, a user with
/// nothing to log in with, or one known only by a client certificate on a listener that asks
/// for none.
fn edge_login_refusal(
    acl: &AclRules,
    listener: &crate::config::ListenerConfig,
    name: &str,
) -> Option<String> {
    let Some(user) = acl.user(name) else {
        return Some(format!("unknown user `{name}`"));
    };
    if user.password.is_some() || user.token.is_some() {
        return None;
    }
    if user.tls_subject.is_some() || user.tls_san.is_some() {
        let asks_for_certificates = listener
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        return (!asks_for_certificates).then(|| {
            format!(
                "`{name}` logs in only with a client certificate, which listener `{}` does not ask for",
                listener.name
            )
        });
    }
    let is_no_auth_user = acl
        .no_auth_user
        .as_ref()
        .is_some_and(|u| u.name == user.name);
    (!is_no_auth_user).then(|| {
        format!("`{name}` has no password: only the no_auth_user may be named without one")
    })
}

pub fn explain(config: &Config, request: &ExplainRequest) -> Result<Report, ExplainError> {
    let listener = match &request.listener {
        Some(name) => config
            .listeners
            .iter()
            .find(|l| &l.name == name)
            .ok_or_else(|| ExplainError::UnknownListener(name.clone()))?,
        None => config
            .listeners
            .first()
            .ok_or_else(|| ExplainError::UnknownListener(String::new()))?,
    };
    let op = match request.op {
        ExplainOp::Pub => "pub",
        ExplainOp::Sub => "sub",
    };
    // Every file is loaded first, so that one that fails exits 1 whatever the answer.
    let acl = AclRules::load(&config.rule_files())?;
    let loaded = LoadedSets::load(&config.rewrite_config())?;
    let tags = config.tag_config()?;

    // Who the client is, as the running edge would decide it.
    let (user, login) = match config.auth.mode {
        AuthModeConfig::Passthrough => match (&request.user, &acl.no_auth_user) {
            (None, Some(anonymous)) => (
                Some(anonymous.name.to_string()),
                Some(format!(
                    "passthrough mode: no name, so the no_auth_user `{}`",
                    anonymous.name
                )),
            ),
            (user, _) => (user.clone(), None),
        },
        AuthModeConfig::Edge => match request.user.as_deref() {
            None => match &acl.no_auth_user {
                Some(anonymous) => (
                    Some(anonymous.name.to_string()),
                    Some(format!(
                        "edge mode: no credentials, so the no_auth_user `{}`",
                        anonymous.name
                    )),
                ),
                None => (None, None),
            },
            Some(name) => (
                Some(name.to_string()),
                acl.user(name).map(|u| {
                    let how = if u.password.is_some() {
                        "its password"
                    } else if u.token.is_some() {
                        "its token"
                    } else if u.tls_subject.is_some() || u.tls_san.is_some() {
                        "its client certificate"
                    } else {
                        "no password (the no_auth_user)"
                    };
                    format!("edge mode: logs in as `{name}` with {how}, which is not checked here")
                }),
            ),
        },
    };
    let mut session = vec![
        format!("listener: {}", listener.name),
        format!("user: {}", user.as_deref().unwrap_or("(none)")),
    ];
    session.extend(login);
    session.push(format!("{op} {}", request.subject));
    let mut sections = vec![Section {
        title: "session",
        lines: session,
    }];
    // In edge mode, a client the edge cannot log in never gets as far as a subject.
    let refused_login = match (config.auth.mode, user.as_deref()) {
        (AuthModeConfig::Passthrough, _) => None,
        (AuthModeConfig::Edge, None) => Some("no credentials and no no_auth_user".to_string()),
        (AuthModeConfig::Edge, Some(name)) => edge_login_refusal(&acl, listener, name),
    };
    if let Some(why) = refused_login {
        sections.push(Section {
            title: "result",
            lines: vec![format!(
                "refused at the edge's login ({why}): -ERR 'Authorization Violation'"
            )],
        });
        return Ok(Report { sections });
    }

    // ACL rules are written in the client's view: they judge the subject before rewrite.
    let action = match request.op {
        ExplainOp::Pub => Action::Publish(&request.subject),
        ExplainOp::Sub => Action::Subscribe {
            subject: &request.subject,
            queue: None,
        },
    };
    let decision = explain_acl(&acl, user.as_deref(), action);
    let allowed = decision.allowed;
    sections.push(Section {
        title: "acl",
        lines: decision.lines,
    });
    if !allowed {
        sections.push(Section {
            title: "result",
            lines: vec!["refused at the edge: nothing is rewritten, tagged or sent".into()],
        });
        return Ok(Report { sections });
    }

    let published = request.op == ExplainOp::Pub;
    // Tagging sees the client's subjects, rewrite comes last (the session's filter order).
    let mut lines = Vec::new();
    match tags {
        None => lines.push("none configured".into()),
        Some(_) if !published => lines.push("subscriptions are not tagged".into()),
        Some(tags) => {
            let h = &tags.file.headers;
            for (name, value) in [
                (&h.user, user.clone()),
                (&h.client_addr, Some("<the client's address>".into())),
                (&h.conn_id, Some("<the connection id>".into())),
                (
                    &h.tls_subject,
                    Some("<the client certificate's subject, when one is presented>".into()),
                ),
            ] {
                if let (false, Some(value)) = (name.is_empty(), value) {
                    lines.push(format!("{name}: {value}"));
                }
            }
            for (name, value) in &tags.file.static_tags {
                lines.push(format!("{name}: {value}"));
            }
            if let Some(field) = tags.json_field(request.subject.as_bytes()) {
                lines.push(format!(
                    "JSON field `{field}` merged into JSON-object payloads"
                ));
            }
            lines.push(format!(
                "client headers named {}* or as above: {}",
                tags.file.reserved_prefix,
                match tags.file.spoofed {
                    nats_edge_filters::tag::SpoofPolicy::Strip => "stripped",
                    nats_edge_filters::tag::SpoofPolicy::Refuse => "message refused",
                }
            ));
        }
    }
    sections.push(Section {
        title: "tagging",
        lines,
    });
    let explained = rewrite::explain(
        &loaded,
        &listener.name,
        user.as_deref(),
        request.subject.as_bytes(),
        published,
    );
    let mut lines = Vec::new();
    match &explained.set {
        Some((name, why)) => lines.push(format!("rule set: {name} (by {})", why.as_str())),
        None => lines.push("rule set: none".into()),
    }
    lines.push(format!(
        "rule: {}",
        explained.rule.as_deref().unwrap_or("none matches")
    ));
    lines.push(format!("upstream subject: {}", explained.upstream_subject));
    sections.push(Section {
        title: "rewrite",
        lines,
    });

    Ok(Report { sections })
}
