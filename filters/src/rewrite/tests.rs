use std::path::{Path, PathBuf};

use super::validate::{literal_tokens, SubjectGen};
use super::*;
use crate::events::NoEvents;
use crate::filter::ConnFacts;
use crate::op::{Pub, Sub};
use crate::subject;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/rewrite")
}

fn load(name: &str) -> RuleSet {
    RuleSet::load(name, &rules_dir().join(format!("{name}.toml"))).unwrap()
}

fn inline(text: &str) -> Result<RuleSet, RuleError> {
    RuleSet::from_toml("t", Path::new("t.toml"), text)
}

fn fwd(set: &RuleSet, s: &str) -> Option<String> {
    set.forward(s.as_bytes(), false)
        .map(|(_, m)| String::from_utf8(m).unwrap())
}

fn rev(set: &RuleSet, s: &str) -> Option<String> {
    set.reverse(s.as_bytes())
        .map(|m| String::from_utf8(m).unwrap())
}

#[test]
fn mount_maps_tokens_and_wildcards_both_ways() {
    let set = load("tenant-mount");
    assert_eq!(
        fwd(&set, "orders.new").as_deref(),
        Some("tenant.acme.orders.new")
    );
    assert_eq!(
        fwd(&set, "orders.*").as_deref(),
        Some("tenant.acme.orders.*")
    );
    assert_eq!(fwd(&set, ">").as_deref(), Some("tenant.acme.>"));
    assert_eq!(
        rev(&set, "tenant.acme.orders.new").as_deref(),
        Some("orders.new")
    );
    assert_eq!(rev(&set, "tenant.other.orders"), None);
    assert_eq!(rev(&set, "tenant.acme"), None);
}

/// nats-server's permissions errors name the subject in the client's view again; queue
/// names, other errors and subjects outside the mount are left alone.
#[test]
fn permissions_errors_name_the_clients_subject() {
    let set = load("tenant-mount");
    let back = |text: &str| reverse_permissions_error(text, |s| set.reverse(s));
    assert_eq!(
        back(r#"Permissions Violation for Publish to "tenant.acme.orders.x""#).as_deref(),
        Some(r#"Permissions Violation for Publish to "orders.x""#)
    );
    assert_eq!(
        back(r#"Permissions Violation for Subscription to "tenant.acme.jobs.>" using queue "tenant.acme.w""#)
            .as_deref(),
        Some(r#"Permissions Violation for Subscription to "jobs.>" using queue "tenant.acme.w""#)
    );
    assert_eq!(
        back(r#"Permissions Violation for Publish with Reply of "tenant.acme._INBOX.a""#)
            .as_deref(),
        Some(r#"Permissions Violation for Publish with Reply of "_INBOX.a""#)
    );
    assert_eq!(
        back(r#"Permissions Violation for Publish to "elsewhere.x""#),
        None
    );
    assert_eq!(back("Maximum Payload Violation"), None);
    assert_eq!(
        back(r#"Permissions Violation for Publish to "unterminated"#),
        None
    );
}

#[test]
fn regex_rules_use_captures_and_their_reverse() {
    let set = load("regex-devices");
    assert_eq!(
        fwd(&set, "dev.s1.temp.c").as_deref(),
        Some("devices.s1.temp.c")
    );
    assert_eq!(fwd(&set, "dev.*.>").as_deref(), Some("devices.*.>"));
    assert_eq!(rev(&set, "devices.s1.temp").as_deref(), Some("dev.s1.temp"));
    assert_eq!(fwd(&set, "dev.only"), None);
    // Publish-only: maps a PUB subject, never a subscription or its deliveries.
    let published = set.forward(b"metrics.web1", true).map(|(_, m)| m);
    assert_eq!(published.as_deref(), Some(&b"telemetry.web1.metrics"[..]));
    assert_eq!(fwd(&set, "metrics.web1"), None);
    assert_eq!(rev(&set, "telemetry.web1.metrics"), None);
    // Subjects are bytes: one that is not UTF-8 is mapped like any other, both ways.
    let mapped = set.forward(b"dev.\xff.t\xc3\xa9", false).map(|(_, m)| m);
    assert_eq!(mapped.as_deref(), Some(&b"devices.\xff.t\xc3\xa9"[..]));
    let back = set.reverse(b"devices.\xff.t");
    assert_eq!(back.as_deref(), Some(&b"dev.\xff.t"[..]));
    // A subject that is UTF-8 meets the pattern as written (`.` takes `é` whole); a pattern
    // with a non-ASCII class loads, and matches no subject that is not UTF-8.
    let words = inline(
        "[[rule]]\nname='p'\nkind='regex'\nclient='^p\\.([a-zé]+)$'\nupstream='y.$1'\n\
         reverse_match='^y\\.([a-zé]+)$'\nreverse='p.$1'\n\
         [[rule]]\nname='u'\nkind='regex'\nclient='^u\\.(.)$'\nupstream='x.$1'\n\
         reverse_match='^x\\.(.)$'\nreverse='u.$1'\n",
    )
    .unwrap();
    assert_eq!(fwd(&words, "p.café").as_deref(), Some("y.café"));
    assert_eq!(fwd(&words, "u.é").as_deref(), Some("x.é"));
    // Unicode classes and case folding mean the same in every build.
    let unicode = inline(
        "[[rule]]\nname='w'\nkind='regex'\nclient='^w\\.(\\w+)$'\nupstream='x.$1'\n\
         reverse_match='^x\\.(\\w+)$'\nreverse='w.$1'\n\
         [[rule]]\nname='m'\nkind='regex'\nclient='^(?i)m\\.(.+)$'\nupstream='metrics.$1'\n\
         publish_only=true\n",
    )
    .unwrap();
    assert_eq!(fwd(&unicode, "w.café").as_deref(), Some("x.café"));
    let published = unicode.forward("M.é".as_bytes(), true).map(|(_, m)| m);
    assert_eq!(published.as_deref(), Some("metrics.é".as_bytes()));
    assert!(words.forward(b"p.caf\xff", false).is_none());
}

#[test]
fn jetstream_api_is_an_exception_to_the_mount() {
    let set = load("jetstream-mount");
    assert_eq!(
        fwd(&set, "$JS.API.STREAM.CREATE.ORDERS").as_deref(),
        Some("$JS.API.STREAM.CREATE.ORDERS")
    );
    assert_eq!(
        fwd(&set, "orders.1").as_deref(),
        Some("tenant.acme.orders.1")
    );
    let payload = jetstream::map_stream_subjects(
        b"$JS.API.STREAM.CREATE.ORDERS",
        br#"{"name":"ORDERS","subjects":["orders.>","x"],"retention":"limits"}"#,
        &set,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        v["subjects"],
        serde_json::json!(["tenant.acme.orders.>", "tenant.acme.x"])
    );
    assert_eq!(v["retention"], "limits");
    // Without subjects nats-server makes the stream capture its name: the mapped name.
    for request in [
        &br#"{"name":"ORDERS"}"#[..],
        br#"{"name":"ORDERS","subjects":null}"#,
        br#"{"name":"ORDERS","subjects":[],"sources":[]}"#,
    ] {
        let payload =
            jetstream::map_stream_subjects(b"$JS.API.STREAM.CREATE.ORDERS", request, &set).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["subjects"], serde_json::json!(["tenant.acme.ORDERS"]));
    }
    // A mirror or a stream with sources captures nothing of its own.
    for request in [
        &br#"{"name":"M","mirror":{"name":"ORDERS"}}"#[..],
        br#"{"name":"S","sources":[{"name":"ORDERS"}]}"#,
    ] {
        assert!(
            jetstream::map_stream_subjects(b"$JS.API.STREAM.CREATE.M", request, &set).is_none()
        );
    }
    assert!(jetstream::map_stream_subjects(b"orders.x", b"{\"subjects\":[]}", &set).is_none());
    // A body that is no JSON object goes as one the server refuses too.
    assert_eq!(
        jetstream::map_stream_subjects(b"$JS.API.STREAM.CREATE.X", b"nope", &set).as_deref(),
        Some(&b"{"[..])
    );
}

/// Subjects nats-server refuses for a stream (everything without `no_ack` or with more
/// than one replica, its APIs without `no_ack`) go out as the client wrote them, for the
/// server to refuse: mapped into the mount, `>` would be accepted as `tenant.acme.>` and
/// capture the client's own requests.
#[test]
fn stream_subjects_nats_server_refuses_are_not_mapped() {
    let set = load("jetstream-mount");
    let create = |request: &str| {
        jetstream::map_stream_subjects(b"$JS.API.STREAM.CREATE.ALL", request.as_bytes(), &set)
    };
    for refused in [
        r#"{"name":"ALL","subjects":[">"]}"#,
        r#"{"name":"ALL","subjects":["orders.>", ">"],"no_ack":false}"#,
        r#"{"name":"ALL","subjects":[">"],"no_ack":true,"num_replicas":3}"#,
        r#"{"name":"ALL","subjects":["*.>"]}"#,
        r#"{"name":"ALL","subjects":["$JS.FOO"]}"#,
        r#"{"name":"ALL","subjects":["$SYS.REQ.>"]}"#,
        r#"{"name":"ALL","subjects":["$NRG.x"]}"#,
    ] {
        assert!(create(refused).is_none(), "{refused}");
    }
    for (accepted, upstream) in [
        (
            r#"{"name":"ALL","subjects":[">"],"no_ack":true}"#,
            "tenant.acme.>",
        ),
        (
            r#"{"name":"ALL","subjects":["*.>"],"no_ack":true}"#,
            "tenant.acme.*.>",
        ),
        (
            r#"{"name":"ALL","subjects":["$JS.EVENT.ADVISORY.>"]}"#,
            "tenant.acme.$JS.EVENT.ADVISORY.>",
        ),
        (
            r#"{"name":"ALL","subjects":["$SYS.ACCOUNT.x"]}"#,
            "tenant.acme.$SYS.ACCOUNT.x",
        ),
        (
            r#"{"name":"ALL","subjects":["orders.*"]}"#,
            "tenant.acme.orders.*",
        ),
    ] {
        let payload = create(accepted).unwrap_or_else(|| panic!("{accepted}"));
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["subjects"][0], upstream, "{accepted}");
    }
}

/// A body the edge cannot read as one JSON object (Go's decoder reads several values one
/// after the other into one config) goes to nats-server as one it refuses, never with its
/// subjects unmapped; an empty one as it is.
#[test]
fn stream_and_consumer_bodies_the_edge_cannot_read_are_refused() {
    let set = load("jetstream-mount");
    let two_values = br#"{"name":"X","subjects":["elsewhere.>"]} {}"#;
    for subject in [
        &b"$JS.API.STREAM.CREATE.X"[..],
        b"$JS.API.STREAM.UPDATE.X",
        b"$JS.API.STREAM.RESTORE.X",
    ] {
        let sent = jetstream::map_stream_subjects(subject, two_values, &set);
        assert_eq!(sent.as_deref(), Some(&b"{"[..]));
        assert!(jetstream::map_stream_subjects(subject, b"", &set).is_none());
        // Go reads `null` and white space as an empty request, whose stream would capture
        // its own name unmapped; a value serde cannot read, Go may.
        for body in [
            &b"null"[..],
            b"  ",
            br#"{"name":"X","subjects":["elsewhere.>"],"description":"\ud800"}"#,
            br#"{"name":"X","subjects":["elsewhere.>"],"x":1e400}"#,
            b"{\"name\":\"X\",\"subjects\":[\"elsewhere.>\"],\"description\":\"\xff\"}",
        ] {
            let sent = jetstream::map_stream_subjects(subject, body, &set);
            assert_eq!(
                sent.as_deref(),
                Some(&b"{"[..]),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
    let subject = b"$JS.API.CONSUMER.CREATE.X";
    let consumer = br#"{"stream_name":"X","config":{"deliver_subject":"elsewhere"}} {}"#;
    let sent = jetstream::map_consumer_filters(subject, subject, consumer, &set);
    assert_eq!(sent.payload.as_deref(), Some(&b"{"[..]));
    // A lookup without options (`null`, as async-nats sends it) names no subject: as it is.
    let lookup = b"$JS.API.STREAM.NAMES";
    let sent = jetstream::map_stream_lookup(lookup, lookup, b"null", &set);
    assert!(sent.payload.is_none());
    let snapshot = br#"{"deliver_subject":"a"} {"deliver_subject":"elsewhere"}"#;
    let sent = jetstream::map_stream_lookup(
        b"$JS.API.STREAM.SNAPSHOT.X",
        b"$JS.API.STREAM.SNAPSHOT.X",
        snapshot,
        &set,
    );
    assert_eq!(sent.payload.as_deref(), Some(&b"{"[..]));
}

/// Go reads JSON keys in any case (Unicode folding included) and merges an object given
/// twice; the edge reads exact keys and the last of two. A body where that could differ
/// (a key that is not lower-case ASCII, or a key given twice, at the top or in `config`) is
/// refused the same way: `NO_ACK` would otherwise make nats-server accept a `>` the edge
/// left for it to refuse, and `ſubjects` or a second `config` would carry subjects the
/// edge never mapped.
#[test]
fn bodies_go_may_read_otherwise_are_refused() {
    let set = load("jetstream-mount");
    let refused = Some(&b"{"[..]);
    for (subject, body) in [
        (
            &b"$JS.API.STREAM.CREATE.ALL"[..],
            r#"{"name":"ALL","subjects":[">"],"NO_ACK":true}"#,
        ),
        (
            b"$JS.API.STREAM.CREATE.ALL",
            r#"{"name":"ALL","subjects":[">"],"no_ack":true,"num_replicas":3,"Num_Replicas":1}"#,
        ),
        (
            b"$JS.API.STREAM.CREATE.ALL",
            r#"{"name":"ALL","subjects":["orders.>"],"\u017fubjects":["elsewhere.>"]}"#,
        ),
        (
            b"$JS.API.STREAM.UPDATE.ALL",
            r#"{"name":"ALL","Subjects":["elsewhere.>"],"sources":[{"name":"A"}]}"#,
        ),
        (
            b"$JS.API.STREAM.RESTORE.ALL",
            r#"{"config":{"name":"ALL","subjects":[">"]},"Config":{"no_ack":true}}"#,
        ),
        (
            b"$JS.API.STREAM.RESTORE.ALL",
            r#"{"config":{"no_ack":true},"\u0063onfig":{"name":"ALL","subjects":[">"]}}"#,
        ),
        (
            b"$JS.API.STREAM.RESTORE.ALL",
            r#"{"config":{"name":"ALL","subjects":[">"],"subjects":["x"]}}"#,
        ),
    ] {
        let sent = jetstream::map_stream_subjects(subject, body.as_bytes(), &set);
        assert_eq!(sent.as_deref(), refused, "{body}");
    }
    let subject = b"$JS.API.CONSUMER.CREATE.S";
    for body in [
        r#"{"stream_name":"S","config":{"deliver_subject":"x"},"config":{"durable_name":"d"}}"#,
        r#"{"stream_name":"S","Config":{"deliver_subject":"x"}}"#,
        r#"{"stream_name":"S","config":{"Deliver_Subject":"x"}}"#,
    ] {
        let sent = jetstream::map_consumer_filters(subject, subject, body.as_bytes(), &set);
        assert_eq!(sent.payload.as_deref(), refused, "{body}");
    }
    // What clients send is read: metadata keys are the user's, below the levels checked.
    let plain = r#"{"name":"ALL","subjects":["orders.>"],"metadata":{"Owner":"x"}}"#;
    let sent = jetstream::map_stream_subjects(b"$JS.API.STREAM.CREATE.ALL", plain.as_bytes(), &set)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["subjects"][0], "tenant.acme.orders.>");
}

#[test]
fn jetstream_consumer_filters_are_mapped_in_the_request_and_its_subject() {
    let set = load("jetstream-mount");
    let request = br#"{"stream_name":"ORDERS","config":{"durable_name":"picky","filter_subject":"orders.new","filter_subjects":["orders.a","$JS.API.x"],"ack_policy":"explicit"}}"#;
    let subject = b"$JS.API.CONSUMER.CREATE.ORDERS.picky.orders.new";
    let mapped = jetstream::map_consumer_filters(subject, subject, request, &set);
    assert_eq!(
        mapped.subject.as_deref(),
        Some(&b"$JS.API.CONSUMER.CREATE.ORDERS.picky.tenant.acme.orders.new"[..])
    );
    let v: serde_json::Value = serde_json::from_slice(&mapped.payload.unwrap()).unwrap();
    assert_eq!(v["config"]["filter_subject"], "tenant.acme.orders.new");
    assert_eq!(
        v["config"]["filter_subjects"],
        serde_json::json!(["tenant.acme.orders.a", "$JS.API.x"])
    );
    assert_eq!(v["config"]["ack_policy"], "explicit");
    // The older forms carry no filter in the subject; other subjects are left alone.
    for older in [
        &b"$JS.API.CONSUMER.CREATE.ORDERS"[..],
        b"$JS.API.CONSUMER.CREATE.ORDERS.picky",
        b"$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.picky",
    ] {
        let mapped = jetstream::map_consumer_filters(older, older, request, &set);
        assert_eq!(mapped.subject, None, "{}", String::from_utf8_lossy(older));
        assert!(mapped.payload.is_some());
    }
    let untouched =
        jetstream::map_consumer_filters(b"orders.x", b"tenant.acme.orders.x", request, &set);
    assert_eq!(untouched, jetstream::MappedRequest::default());
    // A push consumer's deliver subject is where the client subscribes, in its view.
    let push = jetstream::map_consumer_filters(
        b"$JS.API.CONSUMER.CREATE.ORDERS.p",
        b"$JS.API.CONSUMER.CREATE.ORDERS.p",
        br#"{"config":{"name":"p","deliver_subject":"_INBOX.push","deliver_group":"g"}}"#,
        &set,
    );
    let v: serde_json::Value = serde_json::from_slice(&push.payload.unwrap()).unwrap();
    assert_eq!(v["config"]["deliver_subject"], "tenant.acme._INBOX.push");
    assert_eq!(v["config"]["deliver_group"], "g");
    let no_filter = jetstream::map_consumer_filters(
        b"$JS.API.CONSUMER.CREATE.ORDERS.w",
        b"$JS.API.CONSUMER.CREATE.ORDERS.w",
        br#"{"config":{"durable_name":"w"}}"#,
        &set,
    );
    assert_eq!(no_filter, jetstream::MappedRequest::default());
}

#[test]
fn jetstream_lookups_by_subject_look_for_the_mapped_subject() {
    let set = load("jetstream-mount");
    let field = |api: &[u8], request: &[u8], key: &str| {
        let mapped = jetstream::map_stream_lookup(api, api, request, &set);
        assert_eq!(mapped.subject, None);
        let payload = mapped.payload.expect("mapped");
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()[key].clone()
    };
    assert_eq!(
        field(
            b"$JS.API.STREAM.NAMES",
            br#"{"subject":"orders.new"}"#,
            "subject"
        ),
        "tenant.acme.orders.new"
    );
    assert_eq!(
        field(
            b"$JS.API.STREAM.LIST",
            br#"{"offset":0,"subject":"orders.*"}"#,
            "subject"
        ),
        "tenant.acme.orders.*"
    );
    assert_eq!(
        field(
            b"$JS.API.STREAM.INFO.ORDERS",
            br#"{"subjects_filter":">"}"#,
            "subjects_filter"
        ),
        "tenant.acme.>"
    );
    assert_eq!(
        field(
            b"$JS.API.STREAM.PURGE.ORDERS",
            br#"{"filter":"orders.old"}"#,
            "filter"
        ),
        "tenant.acme.orders.old"
    );
    assert_eq!(
        field(
            b"$JS.API.STREAM.MSG.GET.ORDERS",
            br#"{"last_by_subj":"orders.new"}"#,
            "last_by_subj"
        ),
        "tenant.acme.orders.new"
    );
    assert_eq!(
        field(
            b"$JS.API.DIRECT.GET.KV_b",
            br#"{"multi_last":["$KV.b.x","$KV.b.y"]}"#,
            "multi_last"
        ),
        serde_json::json!(["tenant.acme.$KV.b.x", "tenant.acme.$KV.b.y"])
    );
    // A direct get of a subject's last message names it in its own subject.
    let get = jetstream::map_stream_lookup(
        b"$JS.API.DIRECT.GET.KV_b.$KV.b.key",
        b"$JS.acme.API.DIRECT.GET.KV_b.$KV.b.key",
        b"",
        &set,
    );
    assert_eq!(
        get.subject.as_deref(),
        Some(&b"$JS.acme.API.DIRECT.GET.KV_b.tenant.acme.$KV.b.key"[..])
    );
    assert_eq!(get.payload, None);
    // Other requests, a name that only starts like a lookup, and no payload: untouched.
    for (api, request) in [
        (
            &b"$JS.API.STREAM.NAMESX"[..],
            &br#"{"subject":"orders.new"}"#[..],
        ),
        (
            b"$JS.API.STREAM.DELETE.ORDERS",
            br#"{"filter":"orders.new"}"#,
        ),
        (b"$JS.API.STREAM.NAMES", b""),
        (b"orders.new", br#"{"subject":"orders.new"}"#),
    ] {
        assert_eq!(
            jetstream::map_stream_lookup(api, api, request, &set),
            jetstream::MappedRequest::default(),
            "{}",
            String::from_utf8_lossy(api)
        );
    }
}

#[test]
fn jetstream_answers_show_the_clients_subjects() {
    use jetstream::ApiAnswer;
    let set = load("jetstream-mount");
    assert_eq!(
        jetstream::api_answer(b"$JS.API.CONSUMER.INFO.ORDERS.w", b"", &set),
        Some(ApiAnswer::Consumer)
    );
    assert_eq!(
        jetstream::api_answer(b"$JS.API.STREAM.LIST", b"", &set),
        Some(ApiAnswer::Stream)
    );
    assert_eq!(
        jetstream::api_answer(b"$JS.API.STREAM.MSG.GET.ORDERS", b"", &set),
        Some(ApiAnswer::StoredMessage)
    );
    assert_eq!(
        jetstream::api_answer(b"$JS.API.STREAM.DELETE.ORDERS", b"", &set),
        None
    );
    assert_eq!(jetstream::api_answer(b"orders.new", b"", &set), None);
    assert_eq!(
        jetstream::api_answer(b"$JS.API.DIRECT.GET.KV_b.$KV.b.k", b"", &set),
        Some(ApiAnswer::DirectGet { batch: false })
    );
    assert_eq!(
        jetstream::api_answer(
            b"$JS.API.DIRECT.GET.KV_b",
            br#"{"multi_last":["$KV.b.>"]}"#,
            &set
        ),
        Some(ApiAnswer::DirectGet { batch: true })
    );
    for (request, batch) in [
        (&br#"{"Batch":3}"#[..], true),
        (br#"{"batch":0,"seq":1}"#, false),
        (br#"{"multi_last":[]}"#, false),
        (br#"{"last_by_subj":"batch"}"#, false),
    ] {
        assert_eq!(
            jetstream::api_answer(b"$JS.API.DIRECT.GET.KV_b", request, &set),
            Some(ApiAnswer::DirectGet { batch }),
            "{}",
            request.escape_ascii()
        );
    }

    let mapped = |kind, answer: &[u8]| {
        let payload = jetstream::map_api_answer(kind, answer, &set).expect("mapped");
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()
    };
    let consumer = mapped(
        ApiAnswer::Consumer,
        br#"{"type":"io.nats.jetstream.api.v1.consumer_create_response","name":"w","config":{"filter_subject":"tenant.acme.orders.new","filter_subjects":["tenant.acme.a","elsewhere.b"],"deliver_subject":"tenant.acme._INBOX.p","ack_policy":"explicit"},"num_pending":3}"#,
    );
    assert_eq!(consumer["config"]["filter_subject"], "orders.new");
    assert_eq!(
        consumer["config"]["filter_subjects"],
        serde_json::json!(["a", "elsewhere.b"])
    );
    assert_eq!(consumer["config"]["deliver_subject"], "_INBOX.p");
    assert_eq!(consumer["config"]["ack_policy"], "explicit");
    assert_eq!(consumer["num_pending"], 3);
    let list = mapped(
        ApiAnswer::Consumer,
        br#"{"total":1,"consumers":[{"config":{"filter_subject":"tenant.acme.x"}}]}"#,
    );
    assert_eq!(list["consumers"][0]["config"]["filter_subject"], "x");
    let stream = mapped(
        ApiAnswer::Stream,
        br#"{"config":{"name":"ORDERS","subjects":["tenant.acme.orders.>"]},"state":{"messages":2,"subjects":{"tenant.acme.orders.a":1,"tenant.acme.orders.b":1}}}"#,
    );
    assert_eq!(
        stream["config"]["subjects"],
        serde_json::json!(["orders.>"])
    );
    assert_eq!(stream["config"]["name"], "ORDERS");
    assert_eq!(
        stream["state"]["subjects"],
        serde_json::json!({"orders.a": 1, "orders.b": 1})
    );
    let streams = mapped(
        ApiAnswer::Stream,
        br#"{"streams":[{"config":{"subjects":["tenant.acme.x.>"]}}]}"#,
    );
    assert_eq!(
        streams["streams"][0]["config"]["subjects"],
        serde_json::json!(["x.>"])
    );
    let message = mapped(
        ApiAnswer::StoredMessage,
        br#"{"message":{"subject":"tenant.acme.orders.a","seq":1,"data":"aGk="}}"#,
    );
    assert_eq!(message["message"]["subject"], "orders.a");
    assert_eq!(message["message"]["seq"], 1);
    // Nothing to map back (an error answer, subjects outside the mount, not JSON): as is.
    for answer in [
        &br#"{"error":{"code":404,"err_code":10014,"description":"consumer not found"}}"#[..],
        br#"{"config":{"filter_subject":"elsewhere.x"}}"#,
        b"not json",
    ] {
        assert_eq!(
            jetstream::map_api_answer(ApiAnswer::Consumer, answer, &set),
            None
        );
    }
}

/// A direct get's answers name their subject in `Nats-Subject`, mapped back; a batch's
/// messages all are, up to the status that ends it, and the request is done then.
#[test]
fn direct_get_answers_name_the_clients_subject() {
    let set = Arc::new(load("jetstream-mount"));
    let answer = |headers: &[u8], payload: &[u8]| {
        delivery("tenant.acme._INBOX.r", "1", None, Some(headers), payload)
    };
    let stored = b"NATS/1.0\r\nNats-Stream: KV_b\r\nNats-Subject: tenant.acme.$KV.b.k\r\nNats-Sequence: 1\r\n\r\n";
    let mut pending = jetstream::PendingAnswers::default();
    pending.expect(
        b"tenant.acme._INBOX.r",
        jetstream::ApiAnswer::DirectGet { batch: false },
        &set,
    );
    let mut msg = answer(stored, b"v1");
    assert!(pending.map_answer(&mut msg));
    let headers = String::from_utf8(msg.headers.unwrap().to_vec()).unwrap();
    assert!(headers.contains("Nats-Subject: $KV.b.k\r\n"), "{headers}");
    assert!(headers.contains("Nats-Sequence: 1\r\n"), "{headers}");
    assert_eq!(&msg.payload[..], b"v1");
    // Done with its answer: the next delivery there is not taken for one.
    let mut again = answer(stored, b"v1");
    assert!(!pending.map_answer(&mut again));

    pending.expect(
        b"tenant.acme._INBOX.r",
        jetstream::ApiAnswer::DirectGet { batch: true },
        &set,
    );
    for _ in 0..2 {
        let mut msg = answer(stored, b"v");
        assert!(pending.map_answer(&mut msg));
    }
    // A stored message with a status line of its publisher's is one of the batch, and
    // each `Nats-Subject` line is mapped by its own value.
    let mut own_status = answer(
        b"NATS/1.0 200 OK\r\nNats-Subject: x.y\r\nNats-Stream: KV_b\r\nNats-Subject: tenant.acme.$KV.b.k\r\nNats-Sequence: 3\r\n\r\n",
        b"v",
    );
    assert!(pending.map_answer(&mut own_status));
    let headers = String::from_utf8(own_status.headers.unwrap().to_vec()).unwrap();
    assert!(
        headers.contains("Nats-Subject: x.y\r\n") && headers.contains("Nats-Subject: $KV.b.k\r\n"),
        "{headers}"
    );
    let mut end = answer(b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\n\r\n", b"");
    assert!(!pending.map_answer(&mut end));
    let mut after = answer(stored, b"v");
    assert!(!pending.map_answer(&mut after), "the batch is done");
}

/// A burst of requests (a service's key-value reads at once) each gets its answer mapped,
/// in whatever order the answers come; a reply subject reused for two requests maps both
/// answers.
#[test]
fn every_answer_of_a_burst_of_requests_is_mapped() {
    let set = Arc::new(load("jetstream-mount"));
    let stored = b"NATS/1.0\r\nNats-Stream: KV_b\r\nNats-Subject: tenant.acme.$KV.b.k\r\nNats-Sequence: 1\r\n\r\n";
    let mut pending = jetstream::PendingAnswers::default();
    let inbox = |n: usize| format!("tenant.acme._INBOX.r.{n}");
    for n in 0..1000 {
        pending.expect(
            inbox(n).as_bytes(),
            jetstream::ApiAnswer::DirectGet { batch: false },
            &set,
        );
    }
    for n in (0..1000).rev() {
        let mut msg = delivery(&inbox(n), "1", None, Some(stored), b"v");
        assert!(pending.map_answer(&mut msg), "answer {n}");
        let headers = String::from_utf8(msg.headers.unwrap().to_vec()).unwrap();
        assert!(headers.contains("Nats-Subject: $KV.b.k\r\n"), "{headers}");
    }
    let mut late = delivery(&inbox(0), "1", None, Some(stored), b"v");
    assert!(!pending.map_answer(&mut late), "every request is done");

    for _ in 0..2 {
        pending.expect(
            inbox(7).as_bytes(),
            jetstream::ApiAnswer::DirectGet { batch: false },
            &set,
        );
    }
    for _ in 0..2 {
        let mut msg = delivery(&inbox(7), "1", None, Some(stored), b"v");
        assert!(pending.map_answer(&mut msg));
    }
    let mut third = delivery(&inbox(7), "1", None, Some(stored), b"v");
    assert!(!pending.map_answer(&mut third));

    // A batch, then a stream info, on one reply subject: the batch's messages up to its
    // end, then the info, each mapped as its own request's answer.
    pending.expect(
        inbox(8).as_bytes(),
        jetstream::ApiAnswer::DirectGet { batch: true },
        &set,
    );
    pending.expect(inbox(8).as_bytes(), jetstream::ApiAnswer::Stream, &set);
    for _ in 0..2 {
        let mut msg = delivery(&inbox(8), "1", None, Some(stored), b"v");
        assert!(pending.map_answer(&mut msg), "a message of the batch");
    }
    let mut end = delivery(
        &inbox(8),
        "1",
        None,
        Some(b"NATS/1.0 204 EOB\r\nNats-Num-Pending: 0\r\n\r\n"),
        b"",
    );
    assert!(!pending.map_answer(&mut end));
    let info = br#"{"config":{"name":"S","subjects":["tenant.acme.orders.>"]}}"#;
    let mut answer = delivery(&inbox(8), "1", None, None, info);
    assert!(pending.map_answer(&mut answer), "the stream info");
    let payload = String::from_utf8(answer.payload.to_vec()).unwrap();
    assert!(payload.contains(r#""subjects":["orders.>"]"#), "{payload}");
}

/// reverse(forward(s)) == s for random subjects over every rule set shipped in rules/.
#[test]
fn property_every_shipped_set_round_trips() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let set = RuleSet::load("p", &file).unwrap();
        let mut literals: Vec<Vec<u8>> = set.rules.iter().flat_map(literal_tokens).collect();
        literals.dedup();
        let mut checked = 0;
        for seed in 0..20u64 {
            let mut gen = SubjectGen::new(seed * 7919 + 1, literals.clone());
            for _ in 0..500 {
                let s = gen.next_subject();
                assert!(
                    subject::is_valid_subject(&s),
                    "{}",
                    String::from_utf8_lossy(&s)
                );
                let Some((rule, mapped)) = set.forward(&s, false) else {
                    continue;
                };
                checked += 1;
                assert_eq!(
                    set.reverse(&mapped).as_deref(),
                    Some(&s[..]),
                    "{}: rule {} subject {}",
                    file.display(),
                    rule.name,
                    String::from_utf8_lossy(&s)
                );
            }
        }
        assert!(
            checked > 100,
            "{}: only {checked} subjects mapped",
            file.display()
        );
    }
}

#[test]
fn shipped_invalid_set_names_rule_and_subject() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/invalid/irreversible.toml");
    let err = RuleSet::load("bad", &file).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RuleError::Irreversible { .. }), "{text}");
    assert!(text.contains("irreversible.toml"), "{text}");
    assert!(text.contains("`lossy-devices`"), "{text}");
    assert!(text.contains("maps back to `dev.x."), "{text}");
}

/// A regex rule that maps back part of a mount's upstream namespace: the mount's subjects
/// there would come back as the regex rule's. The mount's probes are drawn from the other
/// rule's words too, so the load finds one.
#[test]
fn a_mount_whose_subjects_another_rule_maps_back_is_refused() {
    let err = inline(
        "[[rule]]\nname='dev'\nkind='regex'\nclient='^dev\\.([^.]+)$'\n\
         upstream='tenant.acme.orders.dev.$1'\n\
         reverse_match='^tenant\\.acme\\.orders\\.dev\\.([^.]+)$'\nreverse='dev.$1'\n\
         [[rule]]\nname='orders'\nkind='mount'\nclient='orders.>'\nupstream='tenant.acme.orders.>'\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RuleError::Irreversible { .. }), "{text}");
    assert!(
        text.contains("rule `orders` is not reversible: `orders.dev."),
        "{text}"
    );
}

#[test]
fn load_errors_name_the_problem() {
    let err = inline(
        "[[rule]]\nname='a'\nkind='mount'\nclient='orders.>'\nupstream='x.>'\n\
         [[rule]]\nname='b'\nkind='mount'\nclient='orders.>'\nupstream='y.>'\n",
    )
    .unwrap_err();
    assert!(matches!(err, RuleError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("`a` and `b`"), "{err}");

    // A broader mount listed first would leave the narrower one dead.
    let err = inline(
        "[[rule]]\nname='all'\nkind='mount'\nclient='>'\nupstream='t.>'\n\
         [[rule]]\nname='js'\nkind='mount'\nclient='$JS.API.>'\nupstream='$JS.API.>'\n",
    )
    .unwrap_err();
    assert!(matches!(err, RuleError::Conflict { .. }), "{err}");

    let err = inline(
        "[[rule]]\nname='a'\nkind='mount'\nclient='a.>'\nupstream='x.>'\n\
         [[rule]]\nname='b'\nkind='mount'\nclient='b.>'\nupstream='x.y.>'\n",
    )
    .unwrap_err();
    assert!(matches!(err, RuleError::UpstreamConflict { .. }), "{err}");

    let err = inline("[[rule]]\nname='r'\nkind='regex'\nclient='^a\\.(.+)$'\nupstream='b.$1'\n")
        .unwrap_err();
    assert!(err.to_string().contains("not reversible"), "{err}");

    let err = inline(
        "[[rule]]\nname='r'\nkind='regex'\nclient='^a\\.(.+)$'\nupstream='b.$2'\nreverse_match='^b\\.(.+)$'\nreverse='a.$1'\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("$2"), "{err}");

    let err =
        inline("[[rule]]\nname='m'\nkind='mount'\nclient='orders'\nupstream='x.>'\n").unwrap_err();
    assert!(
        err.to_string().contains("must end with the token `>`"),
        "{err}"
    );

    let err = inline("[[rule]]\nname='m'\nkind='mount'\nclient='a.>'\nupstream='x.>'\nbogus=1\n")
        .unwrap_err();
    assert!(matches!(err, RuleError::Parse { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(":6: `rule.0.bogus`: unknown field `bogus`"),
        "{err}"
    );

    // A regex and a mount claiming one subject.
    let err = inline(
        "[[rule]]\nname='m'\nkind='mount'\nclient='dev.>'\nupstream='x.>'\n\
         [[rule]]\nname='r'\nkind='regex'\nclient='^dev\\.(.+)$'\nupstream='y.$1'\nreverse_match='^y\\.(.+)$'\nreverse='dev.$1'\n",
    )
    .unwrap_err();
    assert!(matches!(err, RuleError::Conflict { .. }), "{err}");
}

fn conn() -> ConnFacts {
    ConnFacts {
        conn_id: 7,
        listener: "public".into(),
        client_addr: "192.0.2.1:5000".parse().unwrap(),
        transport: "tcp",
        tls_peer: None,
        tls_handshake_pending: false,
    }
}

fn filter_for(set: &str, users: &[(&str, &str)]) -> (Box<dyn Filter>, SessionCtx) {
    let mut config = RewriteConfig::default();
    config
        .sets
        .insert(set.into(), rules_dir().join(format!("{set}.toml")));
    if users.is_empty() {
        config.default = Some(set.into());
    }
    for (u, s) in users {
        config.users.insert((*u).into(), (*s).into());
    }
    let factory = RewriteFactory {
        rules: Arc::new(RewriteRules::load(&config).unwrap()),
        events: Arc::new(NoEvents),
    };
    (factory.build(&conn()), SessionCtx::new(conn()))
}

fn publish(subject: &str, reply: Option<&str>) -> ClientOp {
    ClientOp::Pub(Pub {
        subject: Bytes::from(subject.to_string()),
        reply: reply.map(|r| Bytes::from(r.to_string())),
        headers: None,
        payload: Bytes::from_static(b"payload"),
    })
}

fn deliver(subject: &str, reply: Option<&str>) -> ServerOp {
    ServerOp::Msg(delivery(subject, "1", reply, None, b"x"))
}

/// A delivery of `payload` (and `headers`) on `subject` to the subscription `sid`.
fn delivery(
    subject: &str,
    sid: &str,
    reply: Option<&str>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Msg {
    Msg {
        subject: Bytes::copy_from_slice(subject.as_bytes()),
        sid: Bytes::copy_from_slice(sid.as_bytes()),
        reply: reply.map(|r| Bytes::copy_from_slice(r.as_bytes())),
        headers: headers.map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(payload),
    }
}

#[test]
fn filter_maps_every_subject_and_keeps_the_payload() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[]);
    let mut op = publish("orders.new", Some("_INBOX.a.1"));
    let before = match &op {
        ClientOp::Pub(p) => p.payload.as_ptr(),
        _ => unreachable!(),
    };
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert_eq!(&p.subject[..], b"tenant.acme.orders.new");
    assert_eq!(p.reply.as_deref(), Some(&b"tenant.acme._INBOX.a.1"[..]));
    assert_eq!(p.payload.as_ptr(), before, "the payload is not copied");

    let mut sub = ClientOp::Sub(Sub {
        subject: Bytes::from_static(b"orders.*"),
        queue: Some(Bytes::from_static(b"workers")),
        sid: Bytes::from_static(b"1"),
    });
    assert_eq!(f.on_client_op(&mut sub, &mut ctx), Verdict::Changed);
    let ClientOp::Sub(s) = &sub else {
        unreachable!()
    };
    assert_eq!(&s.subject[..], b"tenant.acme.orders.*");
    assert_eq!(s.queue.as_deref(), Some(&b"workers"[..]));

    let mut msg = deliver("tenant.acme.orders.new", Some("tenant.acme._INBOX.a.1"));
    assert_eq!(f.on_server_op(&mut msg, &mut ctx), Verdict::Changed);
    let ServerOp::Msg(m) = &msg else {
        unreachable!()
    };
    assert_eq!(&m.subject[..], b"orders.new");
    assert_eq!(m.reply.as_deref(), Some(&b"_INBOX.a.1"[..]));
}

fn reply_of(msg: &ServerOp) -> Bytes {
    let ServerOp::Msg(m) = msg else {
        unreachable!()
    };
    m.reply.clone().unwrap()
}

fn subject_of(op: &ClientOp) -> &[u8] {
    let ClientOp::Pub(p) = op else { unreachable!() };
    &p.subject
}

/// A reply subject from outside the mount reaches the client as a token of the edge's,
/// and the answer to the token goes out to it. The sender picked the reply subject, so it
/// is not what the client sees: a sender that picks `orders.new` does not turn the
/// client's own publishes to `orders.new` away from the mount.
#[test]
fn reply_from_outside_the_mount_is_answered_through_a_token() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[]);
    let mut msg = deliver("tenant.acme.svc", Some("_INBOX.outside.1"));
    assert_eq!(f.on_server_op(&mut msg, &mut ctx), Verdict::Changed);
    let token = reply_of(&msg);
    assert!(token.starts_with(b"_R_.") && token.len() == 20, "{token:?}");
    let mut answer = publish(std::str::from_utf8(&token).unwrap(), None);
    assert_eq!(f.on_client_op(&mut answer, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of(&answer), b"_INBOX.outside.1");
    // Answered again (JetStream acks, progress): still the same reply subject.
    let mut again = publish(std::str::from_utf8(&token).unwrap(), None);
    f.on_client_op(&mut again, &mut ctx);
    assert_eq!(subject_of(&again), b"_INBOX.outside.1");
    // The upstream refusing that publish names the token, never the subject it stands for.
    let mut refused =
        ServerOp::Err(r#"Permissions Violation for Publish to "_INBOX.outside.1""#.into());
    assert_eq!(f.on_server_op(&mut refused, &mut ctx), Verdict::Changed);
    assert_eq!(
        refused,
        ServerOp::Err(format!(
            r#"Permissions Violation for Publish to "{}""#,
            std::str::from_utf8(&token).unwrap()
        ))
    );
    // A responder that hands the request on with the token as its reply: the final answer
    // goes to the requester outside the mount.
    let token_text = std::str::from_utf8(&token).unwrap();
    let mut handed_on = publish("svc.next", Some(token_text));
    assert_eq!(f.on_client_op(&mut handed_on, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &handed_on else {
        unreachable!()
    };
    assert_eq!(&p.subject[..], b"tenant.acme.svc.next");
    assert_eq!(p.reply.as_deref(), Some(&b"_INBOX.outside.1"[..]));
    // The subject itself, published by the client, is the client's own: into the mount.
    let mut own = publish("_INBOX.outside.1", None);
    assert_eq!(f.on_client_op(&mut own, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of(&own), b"tenant.acme._INBOX.outside.1");

    let mut lure = deliver("tenant.acme.svc", Some("orders.new"));
    f.on_server_op(&mut lure, &mut ctx);
    assert_ne!(&reply_of(&lure)[..], b"orders.new");
    assert_ne!(reply_of(&lure), token, "a token per delivery");
    let mut own = publish("orders.new", None);
    f.on_client_op(&mut own, &mut ctx);
    assert_eq!(subject_of(&own), b"tenant.acme.orders.new");

    // JetStream's replies are read by clients: shown and answered as they are.
    let ack = "$JS.ACK.ORDERS.w.1.1.1.1700000000000000000.0";
    let mut msg = deliver("tenant.acme.orders.new", Some(ack));
    f.on_server_op(&mut msg, &mut ctx);
    assert_eq!(&reply_of(&msg)[..], ack.as_bytes());
    let mut answer = publish(ack, None);
    assert_eq!(f.on_client_op(&mut answer, &mut ctx), Verdict::Forward);
    // Any other `$JS.` reply is the sender's pick: a token, so the answer cannot land on the
    // upstream's JetStream API.
    let mut lure = deliver("tenant.acme.svc", Some("$JS.API.STREAM.PURGE.ORDERS"));
    f.on_server_op(&mut lure, &mut ctx);
    assert!(
        reply_of(&lure).starts_with(b"_R_."),
        "{:?}",
        reply_of(&lure)
    );
    let mut own = publish("$JS.API.STREAM.PURGE.ORDERS", None);
    f.on_client_op(&mut own, &mut ctx);
    assert_eq!(subject_of(&own), b"tenant.acme.$JS.API.STREAM.PURGE.ORDERS");
}

/// An upstream reply subject the set maps back to a client subject that goes out somewhere
/// else (`tenant.acme.$JS.API.x` under the `>` mount, where `$JS.API.>` is carved out) is
/// from outside: the answer goes back to it, not to the carved-out namespace.
#[test]
fn a_reply_that_would_be_answered_elsewhere_is_from_outside() {
    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    let mut msg = deliver(
        "tenant.acme.svc",
        Some("tenant.acme.$JS.API.STREAM.DELETE.ORDERS"),
    );
    f.on_server_op(&mut msg, &mut ctx);
    let token = reply_of(&msg);
    assert!(token.starts_with(b"_R_."), "{token:?}");
    let mut answer = publish(std::str::from_utf8(&token).unwrap(), None);
    f.on_client_op(&mut answer, &mut ctx);
    assert_eq!(
        subject_of(&answer),
        b"tenant.acme.$JS.API.STREAM.DELETE.ORDERS"
    );
    // Replies that map back and forth as they are stay as they were.
    let mut msg = deliver("tenant.acme.svc", Some("tenant.acme._INBOX.a"));
    f.on_server_op(&mut msg, &mut ctx);
    assert_eq!(&reply_of(&msg)[..], b"_INBOX.a");
    let mut msg = deliver("tenant.acme.svc", Some("$JS.API.INFO"));
    f.on_server_op(&mut msg, &mut ctx);
    assert_eq!(&reply_of(&msg)[..], b"$JS.API.INFO");
}

fn hpub(subject: &str, headers: &'static [u8], payload: &'static [u8]) -> ClientOp {
    ClientOp::Pub(Pub {
        subject: Bytes::from(subject.to_string()),
        reply: None,
        headers: Some(Bytes::from_static(headers)),
        payload: Bytes::from_static(payload),
    })
}

/// A message trace's report names the upstream's servers and other clients: through a mount
/// its destination is set to nats-server's "trace disabled". JetStream's subject headers
/// are mapped into the mount like reply subjects.
#[test]
fn subject_headers_are_mapped_and_traces_disabled() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[]);
    let mut mapped = |block: &'static [u8]| {
        let mut op = hpub("orders.new", block, b"p");
        assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
        let ClientOp::Pub(p) = op else { unreachable!() };
        p.headers.unwrap()
    };
    assert_eq!(
        mapped(b"NATS/1.0\r\nA: 1\r\nNats-Trace-Dest:trace.out\r\nnats-trace-dest: x\r\n\r\n"),
        &b"NATS/1.0\r\nA: 1\r\nNats-Trace-Dest: trace disabled\r\n\
           nats-trace-dest: trace disabled\r\n\r\n"[..]
    );
    // nats-server finds the destination past an empty line too; the empty line stays where
    // it was, so a reader that stops there still sees no field after it.
    assert_eq!(
        mapped(b"NATS/1.0\r\nA: 1\r\n\r\nNats-Trace-Dest: trace.out\r\n\r\n"),
        &b"NATS/1.0\r\nA: 1\r\n\r\nNats-Trace-Dest: trace disabled\r\n\r\n"[..]
    );
    // A schedule's target and source, and the subject a publish expects a sequence on.
    assert_eq!(
        mapped(
            b"NATS/1.0\r\nNats-Schedule: @at 2020-01-01T00:00:00Z\r\n\
              Nats-Schedule-Target: events.orders\r\nNats-Schedule-Source: events.last\r\n\
              Nats-Expected-Last-Subject-Sequence-Subject: events.>\r\n\r\n"
        ),
        &b"NATS/1.0\r\nNats-Schedule: @at 2020-01-01T00:00:00Z\r\n\
           Nats-Schedule-Target: tenant.acme.events.orders\r\n\
           Nats-Schedule-Source: tenant.acme.events.last\r\n\
           Nats-Expected-Last-Subject-Sequence-Subject: tenant.acme.events.>\r\n\r\n"[..]
    );
    // A block the edge cannot read, in which nats-server may find one, is refused.
    let mut op = hpub(
        "orders.new",
        b"NATS/1.0\r\nNats-Trace-Dest: trace.out\r\nx",
        b"p",
    );
    assert_eq!(
        f.on_client_op(&mut op, &mut ctx),
        Verdict::Close {
            reason: CloseReason::ProtocolViolation,
            error: None
        }
    );
    let mut op = hpub("orders.new", b"NATS/1.0\r\nA: 1\r\nx", b"p");
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
}

/// nats-server reads a key from the start of a line up to its colon, as written: only a
/// line starting with one of the keys it reads subjects from can name one, so only such a
/// block is parsed for one.
#[test]
fn only_a_line_starting_with_an_exact_key_may_name_a_subject() {
    use super::may_name_subject as may;
    assert!(may(b"NATS/1.0\r\nNats-Schedule-Target: t\r\n\r\n"));
    assert!(may(
        b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence-Subject: t\r\n\r\n"
    ));
    assert!(!may(b"NATS/1.0\r\nNats-Msg-Id: t\r\n\r\n"));
    assert!(may(b"NATS/1.0\r\nNats-Trace-Dest: t\r\n\r\n"));
    assert!(may(b"NATS/1.0\r\nA: 1\r\nNats-Trace-Dest:t\r\n\r\n"));
    assert!(!may(b"NATS/1.0\r\nnats-trace-dest: t\r\n\r\n"));
    assert!(!may(b"NATS/1.0\r\nNats-Trace-Dest : t\r\n\r\n"));
    assert!(!may(b"NATS/1.0\r\nA: Nats-Trace-Dest: t\r\n\r\n"));
    assert!(!may(
        b"NATS/1.0\r\nNats-Edge-User: u\r\nNats-Trace: t\r\n\r\n"
    ));
}

/// What the rewrite adds (here, JetStream stream subjects) counts against max_payload: a
/// request that no longer fits is refused as an oversized PUB is, never sent upstream.
#[test]
fn a_mapped_request_over_max_payload_is_refused() {
    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    let subjects: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let request =
        serde_json::to_vec(&serde_json::json!({"name": "S", "subjects": subjects})).unwrap();
    let op = |payload: &[u8]| {
        ClientOp::Pub(Pub {
            subject: Bytes::from_static(b"$JS.API.STREAM.CREATE.S"),
            reply: Some(Bytes::from_static(b"_INBOX.r")),
            headers: None,
            payload: Bytes::copy_from_slice(payload),
        })
    };
    ctx.max_payload = request.len() as u64 + 20 * 12 - 1;
    assert_eq!(
        f.on_client_op(&mut op(&request), &mut ctx),
        Verdict::close_with(
            CloseReason::MaxPayloadExceeded,
            crate::errors::MAX_PAYLOAD_VIOLATION
        )
    );
    ctx.max_payload += 1;
    assert_eq!(
        f.on_client_op(&mut op(&request), &mut ctx),
        Verdict::Changed
    );
}

#[test]
fn no_responders_status_names_the_client_subject() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[]);
    let mut msg = no_responders("tenant.acme._INBOX.a.1", "tenant.acme.svc.none");
    assert_eq!(f.on_server_op(&mut msg, &mut ctx), Verdict::Changed);
    let ServerOp::Msg(m) = &msg else {
        unreachable!()
    };
    assert_eq!(&m.subject[..], b"_INBOX.a.1");
    assert_eq!(
        m.headers.as_deref(),
        Some(&b"NATS/1.0 503\r\nNats-Subject: svc.none\r\n\r\n"[..])
    );
}

/// nats-server's 503 no-responders status for a request to `subject`, delivered on `inbox`.
fn no_responders(inbox: &str, subject: &str) -> ServerOp {
    ServerOp::Msg(Msg {
        subject: Bytes::from(inbox.to_string()),
        sid: Bytes::from_static(b"1"),
        reply: None,
        headers: Some(Bytes::from(format!(
            "NATS/1.0 503\r\nNats-Subject: {subject}\r\n\r\n"
        ))),
        payload: Bytes::new(),
    })
}

/// A request through a publish-only rule has no reverse: the no-responders status and a
/// permissions error about it name the subject the client used, from the request's own
/// mapping.
#[test]
fn answers_about_a_publish_only_request_name_the_client_subject() {
    let (mut f, mut ctx) = filter_for("regex-devices", &[]);
    let mut request = publish("metrics.web1", Some("_INBOX.a.1"));
    assert_eq!(f.on_client_op(&mut request, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of(&request), b"telemetry.web1.metrics");
    let mut status = no_responders("_INBOX.a.1", "telemetry.web1.metrics");
    assert_eq!(f.on_server_op(&mut status, &mut ctx), Verdict::Changed);
    let ServerOp::Msg(m) = &status else {
        unreachable!()
    };
    assert_eq!(
        m.headers.as_deref(),
        Some(&b"NATS/1.0 503\r\nNats-Subject: metrics.web1\r\n\r\n"[..])
    );
    let mut refused =
        ServerOp::Err(r#"Permissions Violation for Publish to "telemetry.web1.metrics""#.into());
    assert_eq!(f.on_server_op(&mut refused, &mut ctx), Verdict::Changed);
    assert_eq!(
        refused,
        ServerOp::Err(r#"Permissions Violation for Publish to "metrics.web1""#.into())
    );
}

#[test]
fn per_user_sets_apply_once_the_identity_is_known() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[("alice", "tenant-mount")]);
    assert_eq!(
        f.interest(),
        Interest::of(&[
            OpKind::Connect,
            OpKind::Pub,
            OpKind::Sub,
            OpKind::Unsub,
            OpKind::Msg,
            OpKind::ServerErr
        ])
    );
    let mut op = publish("orders.new", None);
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Forward);
    ctx.identity = Some(crate::Identity {
        user: Some("bob".into()),
        method: crate::AuthMethod::Password,
    });
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Forward);
    ctx.identity = Some(crate::Identity {
        user: Some("alice".into()),
        method: crate::AuthMethod::Password,
    });
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
}

/// A session whose CONNECT names a user without a set (only other users have one) keeps
/// its messages on the fast path: only its SUB and UNSUB are recorded, and a later CONNECT
/// naming a user with a set brings the rest back.
#[test]
fn a_user_without_a_set_costs_no_look_at_messages() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[("alice", "tenant-mount")]);
    let mut connect = ClientOp::Connect(Box::default());
    ctx.identity = Some(crate::Identity {
        user: Some("bob".into()),
        method: crate::AuthMethod::Password,
    });
    assert_eq!(f.on_client_op(&mut connect, &mut ctx), Verdict::Forward);
    assert_eq!(
        f.interest(),
        Interest::of(&[OpKind::Connect, OpKind::Sub, OpKind::Unsub])
    );
    ctx.identity = Some(crate::Identity {
        user: Some("alice".into()),
        method: crate::AuthMethod::Password,
    });
    f.on_client_op(&mut connect, &mut ctx);
    assert!(f.interest().contains(OpKind::Msg));
    assert_eq!(
        f.on_client_op(&mut publish("orders.new", None), &mut ctx),
        Verdict::Changed
    );
}

#[test]
fn no_rules_no_interest() {
    let factory = RewriteFactory {
        rules: Arc::new(RewriteRules::load(&RewriteConfig::default()).unwrap()),
        events: Arc::new(NoEvents),
    };
    assert_eq!(factory.build(&conn()).interest(), Interest::NONE);
}

/// A reload that takes its listener's rules away from a live session leaves its mapped
/// subscriptions mapped back; one that gives a listener rules does not map back the
/// deliveries of subscriptions made unmapped before it. Subscriptions on a listener without
/// rules are all that is looked at there.
#[test]
fn a_listener_that_loses_or_gains_rules_keeps_its_subscriptions_mapping() {
    let mount = MovableMount::new("listener", "x");
    let on = |listener: &str| {
        let mut config = mount.rules.current().config.clone();
        config.default = None;
        config.listeners = [(listener.to_string(), "s".to_string())].into();
        mount.rules.replace(&config).unwrap();
    };
    on("public");
    let (mut f, mut ctx) = mount.session();
    assert_eq!(
        f.on_client_op(&mut subscribe("a.*", "1"), &mut ctx),
        Verdict::Changed
    );
    on("other");
    f.on_reload(&ctx);
    assert!(f.interest().contains(OpKind::Msg));
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.1", "1"), "a.1");

    let (mut g, mut ctx) = mount.session();
    assert_eq!(
        g.interest(),
        Interest::of(&[OpKind::Connect, OpKind::Sub, OpKind::Unsub])
    );
    assert_eq!(
        g.on_client_op(&mut subscribe("x.a.*", "2"), &mut ctx),
        Verdict::Forward
    );
    on("public");
    g.on_reload(&ctx);
    assert_eq!(delivered_as(&mut g, &mut ctx, "x.a.1", "2"), "x.a.1");
    // Its auto-unsubscribe, whose count the filter cannot know (it did not see every
    // delivery): the last deliveries still come as they are, not mapped with the new set.
    let mut unsub = ClientOp::Unsub(crate::op::Unsub {
        sid: Bytes::from_static(b"2"),
        max: Some(10),
    });
    g.on_client_op(&mut unsub, &mut ctx);
    assert_eq!(delivered_as(&mut g, &mut ctx, "x.a.2", "2"), "x.a.2");

    // An auto-unsubscribe made while deliveries went unseen cannot know its count: a sid
    // reused once the listener has rules is a new, mapped subscription.
    on("other");
    let (mut h, mut ctx) = mount.session();
    h.on_client_op(&mut subscribe("b", "5"), &mut ctx);
    let mut unsub = ClientOp::Unsub(crate::op::Unsub {
        sid: Bytes::from_static(b"5"),
        max: Some(1),
    });
    h.on_client_op(&mut unsub, &mut ctx);
    on("public");
    h.on_reload(&ctx);
    assert_eq!(
        h.on_client_op(&mut subscribe("a.*", "5"), &mut ctx),
        Verdict::Changed
    );
    assert_eq!(delivered_as(&mut h, &mut ctx, "x.a.1", "5"), "a.1");
}

/// A delivery's reply subject under a publish-only carve-out: the client's answer would go
/// through the carve-out, elsewhere, so the client is shown a token that goes back.
#[test]
fn a_reply_a_publish_only_rule_would_send_elsewhere_is_a_token() {
    let dir = std::env::temp_dir().join(format!("nats-edge-rw-po-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("set.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname='metrics'\nkind='mount'\nclient='metrics.>'\nupstream='telemetry.>'\n\
         publish_only=true\n\
         [[rule]]\nname='acme'\nkind='mount'\nclient='>'\nupstream='tenant.acme.>'\n",
    )
    .unwrap();
    let mut config = RewriteConfig::default();
    config.sets.insert("s".into(), file);
    config.default = Some("s".into());
    let factory = RewriteFactory {
        rules: Arc::new(RewriteRules::load(&config).unwrap()),
        events: Arc::new(NoEvents),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (mut f, mut ctx) = (factory.build(&conn()), SessionCtx::new(conn()));
    f.on_client_op(&mut subscribe("svc", "1"), &mut ctx);
    let mut request = deliver("tenant.acme.svc", Some("tenant.acme.metrics.results"));
    assert_eq!(f.on_server_op(&mut request, &mut ctx), Verdict::Changed);
    let token = String::from_utf8(reply_of(&request).to_vec()).unwrap();
    assert!(token.starts_with("_R_."), "{token}");
    let mut answer = publish(&token, None);
    assert_eq!(f.on_client_op(&mut answer, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of(&answer), b"tenant.acme.metrics.results");
    // The client's own publishes there still go through the carve-out.
    let mut own = publish("metrics.results", None);
    f.on_client_op(&mut own, &mut ctx);
    assert_eq!(subject_of(&own), b"telemetry.results");
}

/// A push consumer's idle heartbeat names the flow control request not answered yet; the
/// client's answer to it goes out as it is, as an answer to the request itself would.
#[test]
fn a_stalled_flow_control_named_by_a_heartbeat_is_answered_as_it_is() {
    let (mut f, mut ctx) = filter_for("tenant-mount", &[]);
    f.on_client_op(&mut subscribe("_INBOX.push", "1"), &mut ctx);
    let mut heartbeat = ServerOp::Msg(delivery(
        "tenant.acme._INBOX.push",
        "1",
        None,
        Some(b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\nNats-Last-Stream: 0\r\nNats-Consumer-Stalled: $JS.FC.ORDERS.p.1\r\n\r\n"),
        b"",
    ));
    f.on_server_op(&mut heartbeat, &mut ctx);
    let mut answer = publish("$JS.FC.ORDERS.p.1", None);
    assert_eq!(f.on_client_op(&mut answer, &mut ctx), Verdict::Forward);
    assert_eq!(subject_of(&answer), b"$JS.FC.ORDERS.p.1");
    // Not named by a heartbeat: mounted like any subject.
    let mut other = publish("$JS.FC.ORDERS.p.2", None);
    f.on_client_op(&mut other, &mut ctx);
    assert_eq!(subject_of(&other), b"tenant.acme.$JS.FC.ORDERS.p.2");
}

/// A reply token handed out under a set stands for its reply subject after a reload took
/// the listener's set away: the answer still reaches the requester outside the mount.
#[test]
fn a_token_is_answered_after_the_set_is_gone() {
    let mount = MovableMount::new("token", "x");
    let on = |listener: &str| {
        let mut config = mount.rules.current().config.clone();
        config.default = None;
        config.listeners = [(listener.to_string(), "s".to_string())].into();
        mount.rules.replace(&config).unwrap();
    };
    on("public");
    let (mut f, mut ctx) = mount.session();
    f.on_client_op(&mut subscribe("a.svc", "1"), &mut ctx);
    let mut request = ServerOp::Msg(delivery("x.a.svc", "1", Some("a.outside.1"), None, b"q"));
    assert_eq!(f.on_server_op(&mut request, &mut ctx), Verdict::Changed);
    // A reply the client would publish into the mount: shown as a token.
    let token = String::from_utf8(reply_of(&request).to_vec()).unwrap();
    assert!(token.starts_with("_R_."), "{token}");

    on("other");
    f.on_reload(&ctx);
    let mut answer = publish(&token, None);
    assert_eq!(f.on_client_op(&mut answer, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of(&answer), b"a.outside.1");
    // The upstream refusing it names the token, as the client published it.
    let mut refused = ServerOp::Err(r#"Permissions Violation for Publish to "a.outside.1""#.into());
    assert_eq!(f.on_server_op(&mut refused, &mut ctx), Verdict::Changed);
    assert_eq!(
        refused,
        ServerOp::Err(format!(r#"Permissions Violation for Publish to "{token}""#))
    );
    // Handed on as the reply of another publish: the final answer goes there too.
    let mut handed_on = publish("svc.next", Some(&token));
    assert_eq!(f.on_client_op(&mut handed_on, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &handed_on else {
        unreachable!()
    };
    assert_eq!(p.subject.as_ref(), b"svc.next");
    assert_eq!(p.reply.as_deref(), Some(&b"a.outside.1"[..]));
    // Anything else goes as it is.
    let mut other = publish("a.svc", None);
    assert_eq!(f.on_client_op(&mut other, &mut ctx), Verdict::Forward);
}

#[test]
fn reload_swaps_and_a_bad_file_keeps_the_old_sets() {
    let dir = std::env::temp_dir().join(format!("nats-edge-rw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("set.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname='m'\nkind='mount'\nclient='a.>'\nupstream='x.a.>'\n",
    )
    .unwrap();
    let mut config = RewriteConfig::default();
    config.sets.insert("s".into(), file.clone());
    config.default = Some("s".into());
    let rules = RewriteRules::load(&config).unwrap();
    let mapped = |rules: &RewriteRules| {
        let loaded = rules.current();
        explain(&loaded, "l", None, b"a.1", true).upstream_subject
    };
    assert_eq!(mapped(&rules), "x.a.1");
    std::fs::write(
        &file,
        "[[rule]]\nname='m'\nkind='mount'\nclient='a.>'\nupstream='y.a.>'\n",
    )
    .unwrap();
    rules.reload().unwrap();
    assert_eq!(mapped(&rules), "y.a.1");
    std::fs::write(&file, "[[rule]]\nname='m'\nkind='nope'\n").unwrap();
    assert!(rules.reload().is_err());
    assert_eq!(mapped(&rules), "y.a.1");
    let _ = std::fs::remove_dir_all(dir);
}

fn subscribe(subject: &str, sid: &str) -> ClientOp {
    ClientOp::Sub(Sub {
        subject: Bytes::from(subject.to_string()),
        queue: None,
        sid: Bytes::from(sid.to_string()),
    })
}

/// The subject a delivery on `sid` reaches the client with.
fn delivered_as(f: &mut Box<dyn Filter>, ctx: &mut SessionCtx, subject: &str, sid: &str) -> String {
    let mut msg = ServerOp::Msg(delivery(subject, sid, None, None, b"x"));
    f.on_server_op(&mut msg, ctx);
    let ServerOp::Msg(m) = msg else {
        unreachable!()
    };
    String::from_utf8(m.subject.to_vec()).unwrap()
}

/// A subscription exists at the upstream under the subject its SUB was mapped to: its
/// deliveries map back with that set after a reload changes the session's, and those of a
/// SUB no rule claimed (here the upstream's own subject, outside a partial mount) reach the
/// client as they are, not mapped back into the mount.
#[test]
fn deliveries_map_back_with_the_set_their_subscription_was_mapped_with() {
    let mount = MovableMount::new("subs", "x");
    let (mut f, mut ctx) = mount.session();

    assert_eq!(
        f.on_client_op(&mut subscribe("a.*", "1"), &mut ctx),
        Verdict::Changed
    );
    assert_eq!(
        f.on_client_op(&mut subscribe("x.a.*", "2"), &mut ctx),
        Verdict::Forward
    );
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.1", "1"), "a.1");
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.1", "2"), "x.a.1");

    mount.move_to("y");
    f.on_reload(&ctx);
    let mut sub = subscribe("a.>", "3");
    assert_eq!(f.on_client_op(&mut sub, &mut ctx), Verdict::Changed);
    assert_eq!(subject_of_sub(&sub), b"y.a.>");
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.2", "1"), "a.2");
    assert_eq!(delivered_as(&mut f, &mut ctx, "y.a.2", "3"), "a.2");
    // A SUB reusing the live sid 1 changes nothing, as nats-server ignores it.
    f.on_client_op(&mut subscribe("a.>", "1"), &mut ctx);
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.2", "1"), "a.2");
    // A subscription the edge ended itself is forgotten.
    f.on_client_op(&mut subscribe("y.a.*", "4"), &mut ctx);
    assert_eq!(delivered_as(&mut f, &mut ctx, "y.a.8", "4"), "y.a.8");
    f.on_unsubscribed(&[Bytes::from_static(b"4")]);
    assert_eq!(
        delivered_as(&mut f, &mut ctx, "y.a.9", "4"),
        "a.9",
        "the session's set"
    );

    // An auto-unsubscribe ends the record at its last delivery; an UNSUB at once.
    f.on_client_op(
        &mut ClientOp::Unsub(crate::op::Unsub {
            sid: "1".into(),
            max: Some(4),
        }),
        &mut ctx,
    );
    // Three deliveries so far: the fourth is its last.
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.4", "1"), "a.4");
    assert_eq!(
        delivered_as(&mut f, &mut ctx, "x.a.5", "1"),
        "x.a.5",
        "ended: the session's set"
    );
    f.on_client_op(
        &mut ClientOp::Unsub(crate::op::Unsub {
            sid: "2".into(),
            max: None,
        }),
        &mut ctx,
    );
    assert_eq!(
        delivered_as(&mut f, &mut ctx, "y.a.5", "2"),
        "a.5",
        "ended: the session's set"
    );
}

/// A mount in a rule file of its own, moved by a reload: `<upstream>.a.>` for `a.>`.
struct MovableMount {
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
    rules: Arc<RewriteRules>,
}

impl MovableMount {
    fn new(name: &str, upstream: &str) -> MovableMount {
        let dir = std::env::temp_dir().join(format!("nats-edge-rw-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("set.toml");
        std::fs::write(&file, Self::text(upstream)).unwrap();
        let mut config = RewriteConfig::default();
        config.sets.insert("s".into(), file.clone());
        config.default = Some("s".into());
        let rules = Arc::new(RewriteRules::load(&config).unwrap());
        MovableMount { dir, file, rules }
    }

    fn text(upstream: &str) -> String {
        format!("[[rule]]\nname='m'\nkind='mount'\nclient='a.>'\nupstream='{upstream}.a.>'\n")
    }

    fn session(&self) -> (Box<dyn Filter>, SessionCtx) {
        let factory = RewriteFactory {
            rules: self.rules.clone(),
            events: Arc::new(NoEvents),
        };
        (factory.build(&conn()), SessionCtx::new(conn()))
    }

    fn move_to(&self, upstream: &str) {
        std::fs::write(&self.file, Self::text(upstream)).unwrap();
        self.rules.reload().unwrap();
    }
}

impl Drop for MovableMount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With every subscription mapped with the current set, deliveries skip the sid lookup and
/// go uncounted. An auto-unsubscribe after a reload then cannot know its count: the entry,
/// made with the earlier set, stays, so its last deliveries still map back with that set,
/// until a SUB reuses the sid.
/// Once the upstream dropped every subscription (a second CONNECT), a SUB that reuses a sid
/// is a new subscription, mapped with the session's set; deliveries already on their way for
/// the dropped one still map back with its own.
#[test]
fn a_sid_reused_after_the_subscriptions_were_dropped_is_a_new_subscription() {
    let mount = MovableMount::new("dropped", "x");
    let (mut f, mut ctx) = mount.session();
    // Unmapped: the upstream's own subject, outside the mount.
    assert_eq!(
        f.on_client_op(&mut subscribe("x.a.*", "1"), &mut ctx),
        Verdict::Forward
    );
    f.on_subscriptions_dropped();
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.1", "1"), "x.a.1");
    assert_eq!(
        f.on_client_op(&mut subscribe("a.*", "1"), &mut ctx),
        Verdict::Changed
    );
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.2", "1"), "a.2");
}

#[test]
fn an_uncounted_auto_unsubscribe_after_a_reload_keeps_its_set() {
    let mount = MovableMount::new("unlooked", "x");
    let (mut f, mut ctx) = mount.session();
    f.on_client_op(&mut subscribe("a.*", "1"), &mut ctx);
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.1", "1"), "a.1");
    mount.move_to("y");
    f.on_reload(&ctx);
    let mut unsub = ClientOp::Unsub(crate::op::Unsub {
        sid: "1".into(),
        max: Some(3),
    });
    f.on_client_op(&mut unsub, &mut ctx);
    assert_eq!(delivered_as(&mut f, &mut ctx, "x.a.2", "1"), "a.2");
    // The sid reused: a new subscription, with the current set.
    f.on_client_op(&mut subscribe("a.>", "1"), &mut ctx);
    assert_eq!(delivered_as(&mut f, &mut ctx, "y.a.3", "1"), "a.3");
}

fn subject_of_sub(op: &ClientOp) -> &[u8] {
    let ClientOp::Sub(s) = op else { unreachable!() };
    &s.subject
}

/// With the shipped JetStream set, acks and flow control answers go out unchanged however
/// long after the delivery they answer (the edge need not remember it).
#[test]
fn jetstream_acks_pass_without_being_remembered() {
    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    for subject in [
        "$JS.ACK.ORDERS.worker.1.5.5.1700000000000000000.0",
        "$JS.FC.ORDERS.x.1",
    ] {
        let mut op = publish(subject, None);
        f.on_client_op(&mut op, &mut ctx);
        assert_eq!(subject_of(&op), subject.as_bytes());
    }
    let mut msg = deliver(
        "tenant.acme.orders.new",
        Some("$JS.ACK.ORDERS.worker.1.6.6.1.0"),
    );
    f.on_server_op(&mut msg, &mut ctx);
    assert_eq!(&reply_of(&msg)[..], b"$JS.ACK.ORDERS.worker.1.6.6.1.0");
}

/// Publishes whose upstream subject does not map back: two client subjects that went to one
/// upstream subject are both kept (the latest answers), a run to one is kept once, and a
/// publish that maps back forgets the subject.
#[test]
fn recent_publishes_name_the_latest_client_subject() {
    let mut recent = super::RecentPublishes::default();
    recent.remember(b"x.1", b"a.1");
    recent.remember(b"x.1", b"a.1");
    recent.remember(b"x.1", b"b.1");
    assert_eq!(recent.client_subject(b"x.1").as_deref(), Some(&b"b.1"[..]));
    assert_eq!(recent.0.len(), 2);
    recent.forget(b"x.1");
    assert_eq!(recent.client_subject(b"x.1"), None);
}

/// A mapping that turns a literal token holding `*` into a wildcard (or a wildcard into a
/// literal) would change what the subscription receives: such a SUB is refused as an
/// invalid subject, and not recorded.
#[test]
fn a_subscription_whose_mapping_changes_its_wildcards_is_refused() {
    let file =
        std::env::temp_dir().join(format!("nats-edge-svc-rules-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[[rule]]\nname = 'svc'\nkind = 'regex'\nclient = '^svc-([^.]+)\\.(.+)$'\n\
         upstream = 'svc.$1.$2'\nreverse_match = '^svc\\.([^.]+)\\.(.+)$'\nreverse = 'svc-$1.$2'\n\
         examples = ['svc-a.x']\n",
    )
    .unwrap();
    let mut config = RewriteConfig::default();
    config.sets.insert("svc".into(), file.clone());
    config.default = Some("svc".into());
    let loaded = RewriteRules::load(&config);
    let _ = std::fs::remove_file(&file);
    let factory = RewriteFactory {
        rules: Arc::new(loaded.unwrap()),
        events: Arc::new(NoEvents),
    };
    let (mut f, mut ctx) = (factory.build(&conn()), SessionCtx::new(conn()));
    let sub = |subject: &str| {
        ClientOp::Sub(Sub {
            subject: Bytes::from(subject.to_string()),
            queue: None,
            sid: Bytes::from_static(b"1"),
        })
    };
    // A literal `svc-*` token would become the wildcard `svc.*`.
    assert_eq!(
        f.on_client_op(&mut sub("svc-*.x"), &mut ctx),
        Verdict::error(crate::errors::INVALID_SUBJECT)
    );
    // Where the wildcards stay, the SUB is mapped.
    let mut ok = sub("svc-a.*");
    assert_eq!(f.on_client_op(&mut ok, &mut ctx), Verdict::Changed);
    let ClientOp::Sub(ok) = ok else {
        unreachable!()
    };
    assert_eq!(&ok.subject[..], b"svc.a.*");
}

/// A request to `subject` with `payload`, answered at `reply`.
fn request(subject: &str, reply: Option<&str>, payload: &str) -> ClientOp {
    ClientOp::Pub(Pub {
        subject: Bytes::from(subject.to_string()),
        reply: reply.map(|r| Bytes::from(r.to_string())),
        headers: None,
        payload: Bytes::from(payload.to_string()),
    })
}

fn json_of(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap()
}

/// A snapshot's chunks go to the client's inbox, which it subscribed to in its own view:
/// the request's `deliver_subject` is mapped into the mount as its subscription was.
#[test]
fn a_snapshot_is_delivered_to_the_clients_inbox_in_the_mount() {
    let set = load("jetstream-mount");
    let api = b"$JS.API.STREAM.SNAPSHOT.ORDERS";
    let mapped = jetstream::map_stream_lookup(
        api,
        api,
        br#"{"deliver_subject":"_INBOX.snap","no_consumers":true,"chunk_size":131072}"#,
        &set,
    );
    assert_eq!(mapped.subject, None);
    let v = json_of(&mapped.payload.expect("mapped"));
    assert_eq!(v["deliver_subject"], "tenant.acme._INBOX.snap");
    assert_eq!(v["no_consumers"], true);
    assert_eq!(v["chunk_size"], 131072);

    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    let mut sub = subscribe("_INBOX.snap", "1");
    f.on_client_op(&mut sub, &mut ctx);
    assert_eq!(subject_of_sub(&sub), b"tenant.acme._INBOX.snap");
    let mut op = request(
        "$JS.API.STREAM.SNAPSHOT.ORDERS",
        Some("_INBOX.r.1"),
        r#"{"deliver_subject":"_INBOX.snap"}"#,
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert_eq!(&p.subject[..], b"$JS.API.STREAM.SNAPSHOT.ORDERS");
    assert_eq!(p.reply.as_deref(), Some(&b"tenant.acme._INBOX.r.1"[..]));
    assert_eq!(
        json_of(&p.payload)["deliver_subject"],
        "tenant.acme._INBOX.snap"
    );
}

/// The chunks' acks go out as they are, also for chunks the edge does not remember: a large
/// snapshot sends more chunks than the edge remembers reply subjects.
#[test]
fn snapshot_chunks_are_acked_as_they_are() {
    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    f.on_client_op(&mut subscribe("_INBOX.snap", "1"), &mut ctx);
    let ack = "$JS.SNAPSHOT.ACK.ORDERS.Xk2Z.131072.1";
    let mut chunk = ServerOp::Msg(delivery(
        "tenant.acme._INBOX.snap",
        "1",
        Some(ack),
        None,
        b"chunk",
    ));
    f.on_server_op(&mut chunk, &mut ctx);
    let ServerOp::Msg(m) = &chunk else {
        unreachable!()
    };
    assert_eq!(&m.subject[..], b"_INBOX.snap");
    assert_eq!(m.reply.as_deref(), Some(ack.as_bytes()));
    for subject in [ack, "$JS.SNAPSHOT.ACK.ORDERS.Xk2Z.131072.2"] {
        let mut op = request(subject, None, "");
        f.on_client_op(&mut op, &mut ctx);
        assert_eq!(subject_of(&op), subject.as_bytes());
    }
}

/// A restored stream captures the mapped subjects, as one created through the mount does:
/// the request's `config.subjects`, or the mapped name of a stream without subjects (the
/// name in the request subject when the config names none).
#[test]
fn a_restore_request_maps_its_streams_subjects() {
    let set = load("jetstream-mount");
    let restore = |request: &[u8]| {
        let payload =
            jetstream::map_stream_subjects(b"$JS.API.STREAM.RESTORE.ORDERS", request, &set)
                .expect("mapped");
        json_of(&payload)
    };
    let v = restore(
        br#"{"config":{"name":"ORDERS","subjects":["orders.>"],"retention":"limits"},"state":{"messages":2,"first_seq":1}}"#,
    );
    assert_eq!(
        v["config"]["subjects"],
        serde_json::json!(["tenant.acme.orders.>"])
    );
    assert_eq!(v["config"]["retention"], "limits");
    assert_eq!(v["state"]["messages"], 2);
    for request in [
        &br#"{"config":{"name":"ORDERS"},"state":{}}"#[..],
        br#"{"config":{"name":""}}"#,
        br#"{"config":null}"#,
        br#"{"state":{}}"#,
    ] {
        assert_eq!(
            restore(request)["config"]["subjects"],
            serde_json::json!(["tenant.acme.ORDERS"]),
            "{}",
            request.escape_ascii()
        );
    }
    // A restored mirror captures nothing of its own.
    assert!(jetstream::map_stream_subjects(
        b"$JS.API.STREAM.RESTORE.M",
        br#"{"config":{"name":"M","mirror":{"name":"ORDERS"}}}"#,
        &set
    )
    .is_none());

    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    let mut op = request(
        "$JS.API.STREAM.RESTORE.ORDERS",
        Some("_INBOX.r.1"),
        r#"{"config":{"name":"ORDERS","subjects":["orders.>"]},"state":{}}"#,
    );
    assert_eq!(f.on_client_op(&mut op, &mut ctx), Verdict::Changed);
    let ClientOp::Pub(p) = &op else {
        unreachable!()
    };
    assert_eq!(&p.subject[..], b"$JS.API.STREAM.RESTORE.ORDERS");
    assert_eq!(
        json_of(&p.payload)["config"]["subjects"],
        serde_json::json!(["tenant.acme.orders.>"])
    );
}

/// The client publishes a restore's chunks to the subject the server names in its answer,
/// which the answer shows as it is: they go out as they are, and the server's acks come
/// back to the client's inbox.
#[test]
fn restore_chunks_are_published_as_they_are() {
    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    f.on_client_op(&mut subscribe("_INBOX.r.*", "1"), &mut ctx);
    let answer = br#"{"type":"io.nats.jetstream.api.v1.stream_restore_response","deliver_subject":"$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z"}"#;
    f.on_client_op(
        &mut request(
            "$JS.API.STREAM.RESTORE.ORDERS",
            Some("_INBOX.r.1"),
            r#"{"config":{"name":"ORDERS","subjects":["orders.>"]}}"#,
        ),
        &mut ctx,
    );
    let mut msg = ServerOp::Msg(delivery("tenant.acme._INBOX.r.1", "1", None, None, answer));
    f.on_server_op(&mut msg, &mut ctx);
    let ServerOp::Msg(m) = &msg else {
        unreachable!()
    };
    assert_eq!(&m.subject[..], b"_INBOX.r.1");
    assert_eq!(&m.payload[..], &answer[..]);

    let mut chunk = request(
        "$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z",
        Some("_INBOX.r.2"),
        "chunk",
    );
    f.on_client_op(&mut chunk, &mut ctx);
    let ClientOp::Pub(p) = &chunk else {
        unreachable!()
    };
    assert_eq!(&p.subject[..], b"$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z");
    assert_eq!(p.reply.as_deref(), Some(&b"tenant.acme._INBOX.r.2"[..]));
    assert_eq!(&p.payload[..], b"chunk");
    assert_eq!(
        delivered_as(&mut f, &mut ctx, "tenant.acme._INBOX.r.2", "1"),
        "_INBOX.r.2"
    );
}

/// A snapshot's answer, and the answer to the empty chunk that ends a restore, show the
/// stream's config: in the client's view, so a snapshot saved by the client restores
/// through the mount as it was.
#[test]
fn snapshot_and_restore_answers_show_the_clients_subjects() {
    use jetstream::ApiAnswer;
    let set = load("jetstream-mount");
    assert_eq!(
        jetstream::api_answer(b"$JS.API.STREAM.SNAPSHOT.ORDERS", b"{}", &set),
        Some(ApiAnswer::Stream)
    );
    assert_eq!(
        jetstream::api_answer(b"$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z", b"", &set),
        Some(ApiAnswer::Stream)
    );
    // A chunk's answer is an empty ack, and the restore request's names no stream subject.
    assert_eq!(
        jetstream::api_answer(b"$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z", b"chunk", &set),
        None
    );
    assert_eq!(
        jetstream::api_answer(b"$JS.API.STREAM.RESTORE.ORDERS", b"{}", &set),
        None
    );

    let (mut f, mut ctx) = filter_for("jetstream-mount", &[]);
    f.on_client_op(&mut subscribe("_INBOX.r.*", "1"), &mut ctx);
    let answered = |f: &mut Box<dyn Filter>, ctx: &mut SessionCtx, inbox: &str, answer: &[u8]| {
        let mut msg = ServerOp::Msg(delivery(inbox, "1", None, None, answer));
        f.on_server_op(&mut msg, ctx);
        let ServerOp::Msg(m) = msg else {
            unreachable!()
        };
        assert_eq!(
            m.subject.as_ref(),
            &inbox.as_bytes()["tenant.acme.".len()..]
        );
        json_of(&m.payload)
    };
    f.on_client_op(
        &mut request(
            "$JS.API.STREAM.SNAPSHOT.ORDERS",
            Some("_INBOX.r.1"),
            r#"{"deliver_subject":"_INBOX.snap"}"#,
        ),
        &mut ctx,
    );
    let snapshot = answered(
        &mut f,
        &mut ctx,
        "tenant.acme._INBOX.r.1",
        br#"{"type":"io.nats.jetstream.api.v1.stream_snapshot_response","config":{"name":"ORDERS","subjects":["tenant.acme.orders.>"]},"state":{"messages":2}}"#,
    );
    assert_eq!(
        snapshot["config"]["subjects"],
        serde_json::json!(["orders.>"])
    );
    assert_eq!(snapshot["state"]["messages"], 2);

    f.on_client_op(
        &mut request("$JS.SNAPSHOT.RESTORE.ORDERS.Xk2Z", Some("_INBOX.r.2"), ""),
        &mut ctx,
    );
    let restored = answered(
        &mut f,
        &mut ctx,
        "tenant.acme._INBOX.r.2",
        br#"{"type":"io.nats.jetstream.api.v1.stream_create_response","config":{"name":"ORDERS","subjects":["tenant.acme.orders.>"]},"state":{"messages":2}}"#,
    );
    assert_eq!(
        restored["config"]["subjects"],
        serde_json::json!(["orders.>"])
    );
}
