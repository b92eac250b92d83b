//! Authentication and authorization on the TCP protocol (`--auth`): every request type
//! refused without a login and without a rule, with no data in the answer; exactly the
//! rule needed succeeds; wrong passwords, unknown users, expired and revoked tokens are
//! refused; a replayed SCRAM exchange fails; deleting a user, revoking a token or removing
//! a rule ends the sessions that relied on it; the `herald` CLI manages it all; and the
//! broker refuses to listen beyond loopback without `--auth` unless told to.

use std::time::Duration;

use herald_broker::auth::secrets::Secret;
use herald_client::{Credentials, ErrorCode, Record};
use herald_protocol::scram::ClientFirst;
use herald_protocol::*;
use herald_suite::{binary, topic_names, Raw, TestBroker};
use tokio::process::Command;

const ADMIN_PASSWORD: &str = "correct horse battery staple";

async fn auth_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.auth = true;
        c.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    })
    .await
}

fn admin() -> Credentials {
    Credentials::password("admin", ADMIN_PASSWORD)
}

/// A topic with one record, a pull group and a push group, set up by the administrator.
async fn setup(broker: &TestBroker, topic: &str) {
    let admin = broker.client_as(admin()).await.unwrap();
    admin.create_topic(topic, 1).await.unwrap();
    admin
        .producer()
        .send(topic, Record::new("classified"))
        .await
        .unwrap();
    admin
        .create_pull_group(topic, "pull", StartPosition::Earliest)
        .await
        .unwrap();
    admin
        .create_push_group(topic, "push", Default::default())
        .await
        .unwrap();
}

/// One of every request a client sends, aimed at `topic`, with the operation a rule
/// must grant for it (`None`: it needs only a login, or is administration).
fn requests(topic: &str) -> Vec<(&'static str, Frame)> {
    let t = || topic.to_string();
    let batch = encode_batch(&[Record::new("x")]);
    let range = vec![OffsetRange {
        partition: 0,
        start: 0,
        end: 1,
    }];
    vec![
        (
            "create",
            CreateTopic {
                name: format!("{topic}.new"),
                partitions: 1,
                ..Default::default()
            }
            .into(),
        ),
        ("delete", DeleteTopic { name: t() }.into()),
        ("list", ListTopics {}.into()),
        ("describe", DescribeTopic { name: t() }.into()),
        (
            "publish",
            Publish {
                topic: t(),
                partition: ANY_PARTITION,
                batch,
                ..Default::default()
            }
            .into(),
        ),
        (
            "consume",
            Fetch {
                topic: t(),
                max_messages: 10,
                max_bytes: 1 << 20,
                ..Default::default()
            }
            .into(),
        ),
        (
            "consume",
            JoinGroup {
                topic: t(),
                group: "pull".into(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "consume",
            SyncGroup {
                topic: t(),
                group: "pull".into(),
                member_id: "m".into(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "consume",
            LeaveGroup {
                topic: t(),
                group: "pull".into(),
                member_id: "m".into(),
            }
            .into(),
        ),
        (
            "consume",
            Commit {
                topic: t(),
                group: "pull".into(),
                member_id: "m".into(),
                ..Default::default()
            }
            .into(),
        ),
        (
            "consume",
            Subscribe {
                topic: t(),
                group: "push".into(),
                prefetch_count: 10,
                ..Default::default()
            }
            .into(),
        ),
        ("subscription", Unsubscribe { subscription_id: 1 }.into()),
        (
            "subscription",
            Ack {
                subscription_id: 1,
                ranges: range.clone(),
            }
            .into(),
        ),
        (
            "subscription",
            Nack {
                subscription_id: 1,
                ranges: range.clone(),
                delay_ms: 0,
            }
            .into(),
        ),
        (
            "subscription",
            Reject {
                subscription_id: 1,
                ranges: range.clone(),
                reason: "r".into(),
            }
            .into(),
        ),
        (
            "subscription",
            Touch {
                subscription_id: 1,
                ranges: range,
                extend_ms: 10,
            }
            .into(),
        ),
        (
            "consume",
            CreateGroup {
                topic: t(),
                group: "new".into(),
                ..Default::default()
            }
            .into(),
        ),
        ("describe", ListGroups { topic: t() }.into()),
        (
            "describe",
            DescribeGroup {
                topic: t(),
                group: "pull".into(),
            }
            .into(),
        ),
        (
            "consume",
            ResetGroup {
                topic: t(),
                group: "pull".into(),
                to: ResetTarget::Earliest,
            }
            .into(),
        ),
        (
            "consume",
            DeleteGroup {
                topic: t(),
                group: "pull".into(),
            }
            .into(),
        ),
        (
            "admin",
            CreateUser {
                name: "mallory".into(),
                password: "pw".into(),
                admin: true,
            }
            .into(),
        ),
        (
            "admin",
            SetPassword {
                name: "admin".into(),
                password: "pw".into(),
            }
            .into(),
        ),
        (
            "admin",
            DeleteUser {
                name: "admin".into(),
            }
            .into(),
        ),
        ("admin", ListUsers {}.into()),
        (
            "admin",
            CreateToken {
                user: "admin".into(),
                ttl_ms: 0,
            }
            .into(),
        ),
        ("admin", ListTokens {}.into()),
        ("admin", RevokeToken { id: "0".into() }.into()),
        (
            "admin",
            AddAcl {
                rule: AclRule {
                    user: "mallory".into(),
                    pattern: "*".into(),
                    operations: vec!["admin".into()],
                    ..Default::default()
                },
            }
            .into(),
        ),
        ("admin", ListAcls {}.into()),
        ("admin", RemoveAcl { id: 1 }.into()),
    ]
}

fn code_of(frame: &Frame) -> Option<ErrorCode> {
    match frame {
        Frame::Error(err) => err.error_code(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tcp_request_needs_a_login_then_a_rule_and_gets_no_data_without() {
    let broker = auth_broker().await;
    setup(&broker, "secret").await;
    let admin = broker.client_as(admin()).await.unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();

    // Nobody logged in: every request is refused, and the session goes on.
    let mut anonymous = Raw::greeted(broker.addr()).await;
    for (operation, frame) in requests("secret") {
        let opcode = frame.opcode();
        let answer = anonymous.call(frame).await;
        assert_eq!(
            code_of(&answer),
            Some(ErrorCode::AuthenticationRequired),
            "{opcode:?} ({operation}) answered {answer:?}"
        );
    }

    // Alice, with no rule: refused with NotAuthorized naming what she asked; listing
    // shows her nothing; the calls on subscriptions find none of hers.
    let mut alice = Raw::greeted(broker.addr()).await;
    let ok = alice.scram("alice", "alice-pw").await;
    assert!(
        matches!(&ok, Frame::SaslOk(ok) if ok.user == "alice" && !ok.admin),
        "{ok:?}"
    );
    for (operation, frame) in requests("secret") {
        let opcode = frame.opcode();
        let answer = alice.call(frame).await;
        match operation {
            "list" => assert_eq!(answer, Frame::TopicList(TopicList { topics: vec![] })),
            "subscription" => assert_eq!(
                code_of(&answer),
                Some(ErrorCode::UnknownSubscription),
                "{opcode:?}: {answer:?}"
            ),
            _ => {
                let Frame::Error(err) = &answer else {
                    panic!("{opcode:?} ({operation}) answered {answer:?}")
                };
                assert_eq!(
                    err.error_code(),
                    Some(ErrorCode::NotAuthorized),
                    "{opcode:?}: {err:?}"
                );
                assert!(
                    err.message.contains(operation),
                    "{opcode:?}: {}",
                    err.message
                );
                let resource = if operation == "admin" {
                    "users, tokens and rules"
                } else {
                    "\"secret"
                };
                assert!(
                    err.message.contains(resource),
                    "{opcode:?}: {}",
                    err.message
                );
            }
        }
    }
    alice.expect_alive().await;

    // A rule on another topic grants nothing here.
    admin
        .add_acl(
            "alice",
            "public.*",
            &["publish", "consume", "describe", "create", "delete"],
        )
        .await
        .unwrap();
    for (operation, frame) in requests("secret") {
        if matches!(operation, "list" | "subscription") {
            continue;
        }
        let answer = alice.call(frame).await;
        assert_eq!(
            code_of(&answer),
            Some(ErrorCode::NotAuthorized),
            "{answer:?}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_rule_needed_lets_each_request_through() {
    let broker = auth_broker().await;
    setup(&broker, "orders").await;
    setup(&broker, "audit").await;
    let admin = broker.client_as(admin()).await.unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    let alice = broker
        .client_as(Credentials::password("alice", "alice-pw"))
        .await
        .unwrap();
    let refused = |result: herald_client::Result<_>| match result {
        Err(err) => err.code() == Some(ErrorCode::NotAuthorized),
        Ok(_) => false,
    };

    // publish.
    let rule = admin
        .add_acl("alice", "orders", &["publish"])
        .await
        .unwrap();
    assert_eq!(rule.operations, vec!["publish"]);
    let confirm = alice
        .producer()
        .send("orders", Record::new("mine"))
        .await
        .unwrap();
    assert_eq!(confirm.offset, 1);
    assert!(refused(
        alice
            .fetch(herald_client::FetchRequest::new("orders", 0, 0))
            .await
            .map(drop)
    ));
    // `publish` implies `describe` (a producer learns the partitions), and no more.
    assert_eq!(alice.describe_topic("orders").await.unwrap().name, "orders");
    assert!(refused(alice.describe_topic("audit").await.map(drop)));
    // Publishing to a topic that does not exist would create it: that needs `create`.
    assert!(refused(
        alice
            .producer()
            .send("orders.eu", Record::new("x"))
            .await
            .map(drop)
    ));

    // consume: reads, and every group verb.
    admin
        .add_acl("alice", "orders", &["consume"])
        .await
        .unwrap();
    let fetched = alice
        .fetch(herald_client::FetchRequest::new("orders", 0, 0))
        .await
        .unwrap();
    assert_eq!(fetched.records.len(), 2);
    alice
        .reset_group("orders", "pull", ResetTarget::Latest)
        .await
        .unwrap();
    let consumer = alice.push_consumer("orders", "push").await.unwrap();
    drop(consumer);
    alice.delete_group("orders", "pull").await.unwrap();
    assert!(refused(alice.list_groups("audit").await.map(drop)));

    // describe: the topic, its groups, and listing shows exactly what may be described.
    assert!(refused(
        alice.describe_group("audit", "push").await.map(drop)
    ));
    admin
        .add_acl("alice", "audit", &["describe"])
        .await
        .unwrap();
    assert_eq!(
        alice.describe_group("audit", "push").await.unwrap().group,
        "push"
    );
    assert!(refused(
        alice
            .fetch(herald_client::FetchRequest::new("audit", 0, 0))
            .await
            .map(drop)
    ));
    assert_eq!(
        alice.describe_topic("orders").await.unwrap().partitions[0].next_offset,
        2
    );
    assert_eq!(alice.list_groups("orders").await.unwrap().len(), 1);
    assert_eq!(topic_names(&alice).await, ["audit", "orders"]);

    // create and delete, on a prefix.
    assert!(refused(alice.create_topic("orders.eu", 1).await.map(drop)));
    admin
        .add_acl("alice", "orders.*", &["create", "delete"])
        .await
        .unwrap();
    alice.create_topic("orders.eu", 1).await.unwrap();
    alice.delete_topic("orders.eu").await.unwrap();
    assert!(refused(alice.delete_topic("orders").await));
    assert!(refused(alice.delete_topic("audit").await));
    admin.create_topic("hidden", 1).await.unwrap();
    let listed = alice.list_topics().await.unwrap();
    assert!(listed.iter().all(|t| t.name != "hidden"), "{listed:?}");

    // admin: users, tokens and rules.
    assert!(refused(alice.list_users().await.map(drop)));
    admin.add_acl("alice", "*", &["admin"]).await.unwrap();
    let users: Vec<_> = alice
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(users, vec!["admin", "alice"]);
    // `admin` on `*` is not an administrator's pass to the topics.
    assert!(refused(
        alice
            .fetch(herald_client::FetchRequest::new("audit", 0, 0))
            .await
            .map(drop)
    ));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_users_and_expired_or_revoked_tokens_are_refused() {
    let broker = auth_broker().await;
    let admin = broker.client_as(admin()).await.unwrap();
    admin.create_user("alice", "alice-pw", false).await.unwrap();
    let failed = |result: herald_client::Result<herald_client::Client>| match result {
        Err(err) => err.code() == Some(ErrorCode::AuthenticationFailed),
        Ok(_) => false,
    };
    assert!(failed(
        broker
            .client_as(Credentials::password("alice", "wrong"))
            .await
    ));
    assert!(failed(
        broker
            .client_as(Credentials::password("nobody", "alice-pw"))
            .await
    ));
    assert!(failed(
        broker.client_as(Credentials::token("hrld_made-up")).await
    ));

    let brief = admin
        .create_token("alice", Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    assert!(brief.token.starts_with("hrld_") && brief.summary.expires_ms > 0);
    broker
        .client_as(Credentials::token(&brief.token))
        .await
        .unwrap();
    // (Expired by the clock: waiting 1.6 s outlasts the TTL, however slowly failed
    // logins from this address are answered.)
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(failed(
        broker.client_as(Credentials::token(&brief.token)).await
    ));

    let revoked = admin.create_token("alice", None).await.unwrap();
    broker
        .client_as(Credentials::token(&revoked.token))
        .await
        .unwrap();
    admin.revoke_token(&revoked.summary.id).await.unwrap();
    assert!(failed(
        broker.client_as(Credentials::token(&revoked.token)).await
    ));
    let listed: Vec<_> = admin
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, vec![brief.summary.id.clone()]);

    // PLAIN carries the password as it is: only inside TLS.
    let mut raw = Raw::greeted(broker.addr()).await;
    let answer = raw
        .sasl("PLAIN", sasl::plain_message("alice", "alice-pw"))
        .await;
    assert_eq!(code_of(&answer), Some(ErrorCode::AuthenticationFailed));
    let answer = raw.sasl("KERBEROS", "x").await;
    assert_eq!(code_of(&answer), Some(ErrorCode::AuthenticationFailed));
    // After failures the session still logs in the right way, and is who it says.
    assert!(matches!(
        raw.scram("alice", "alice-pw").await,
        Frame::SaslOk(_)
    ));
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_scram_exchange_is_refused() {
    let broker = auth_broker().await;
    // A captured exchange: the client's two messages, as an eavesdropper saw them.
    let mut raw = Raw::greeted(broker.addr()).await;
    let first = ClientFirst::new("admin");
    let client_first = first.message();
    let challenge = match raw
        .sasl("SCRAM-SHA-256", client_first.clone().into_bytes())
        .await
    {
        Frame::SaslChallenge(challenge) => String::from_utf8(challenge.payload.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    let (client_final, _) = first.answer(&challenge, ADMIN_PASSWORD).unwrap();
    let answer = raw
        .call(SaslContinue {
            payload: client_final.clone().into_bytes().into(),
        })
        .await;
    assert!(matches!(answer, Frame::SaslOk(_)), "{answer:?}");

    // Replayed on a new connection: the broker's nonce is new, so the proof is stale.
    let mut replay = Raw::greeted(broker.addr()).await;
    let again = match replay
        .sasl("SCRAM-SHA-256", client_first.into_bytes())
        .await
    {
        Frame::SaslChallenge(challenge) => String::from_utf8(challenge.payload.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_ne!(again, challenge);
    let answer = replay
        .call(SaslContinue {
            payload: client_final.clone().into_bytes().into(),
        })
        .await;
    assert_eq!(
        code_of(&answer),
        Some(ErrorCode::AuthenticationFailed),
        "{answer:?}"
    );
    assert_eq!(
        code_of(&replay.call(ListTopics {}).await),
        Some(ErrorCode::AuthenticationRequired)
    );
    // Nor does a continuation without an exchange pass.
    let answer = replay
        .call(SaslContinue {
            payload: client_final.into_bytes().into(),
        })
        .await;
    assert_eq!(code_of(&answer), Some(ErrorCode::AuthenticationFailed));
    broker.stop().await;
}

/// The next frame with correlation id 0 that is not a heartbeat or a delivery must be a
/// `CredentialsRevoked` error, and then the connection closes.
async fn expect_revoked(raw: &mut Raw) {
    loop {
        match raw.recv().await {
            (0, Frame::Heartbeat(_) | Frame::Deliver(_)) => continue,
            (0, Frame::Error(err)) => {
                assert_eq!(
                    err.error_code(),
                    Some(ErrorCode::CredentialsRevoked),
                    "{err:?}"
                );
                break;
            }
            other => panic!("expected CredentialsRevoked, got {other:?}"),
        }
    }
    raw.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_deleting_a_user_or_removing_a_rule_ends_open_sessions() {
    let broker = auth_broker().await;
    setup(&broker, "orders").await;
    let admin = broker.client_as(admin()).await.unwrap();
    for user in ["alice", "bob", "carol"] {
        admin.create_user(user, "pw", false).await.unwrap();
    }
    let rule = admin
        .add_acl("carol", "orders", &["consume"])
        .await
        .unwrap();
    admin.add_acl("bob", "orders", &["consume"]).await.unwrap();
    let token = admin.create_token("alice", None).await.unwrap();

    let mut by_token = Raw::greeted(broker.addr()).await;
    assert!(matches!(
        by_token
            .sasl("TOKEN", token.token.clone().into_bytes())
            .await,
        Frame::SaslOk(_)
    ));
    let mut alice_by_password = Raw::greeted(broker.addr()).await;
    assert!(matches!(
        alice_by_password.scram("alice", "pw").await,
        Frame::SaslOk(_)
    ));
    let mut bob = Raw::greeted(broker.addr()).await;
    assert!(matches!(bob.scram("bob", "pw").await, Frame::SaslOk(_)));
    let mut carol = Raw::greeted(broker.addr()).await;
    assert!(matches!(carol.scram("carol", "pw").await, Frame::SaslOk(_)));
    // Carol holds a push subscription: it must not outlive her rule.
    let subscribe = Subscribe {
        topic: "orders".into(),
        group: "push".into(),
        prefetch_count: 1,
        ..Default::default()
    };
    assert!(matches!(carol.call(subscribe).await, Frame::Subscribed(_)));

    admin.revoke_token(&token.summary.id).await.unwrap();
    expect_revoked(&mut by_token).await;
    alice_by_password.expect_alive().await;

    admin.delete_user("alice").await.unwrap();
    expect_revoked(&mut alice_by_password).await;

    admin.remove_acl(rule.id).await.unwrap();
    expect_revoked(&mut carol).await;
    bob.expect_alive().await;
    let fetch = Fetch {
        topic: "orders".into(),
        max_messages: 1,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    assert!(matches!(bob.call(fetch).await, Frame::FetchOk(_)));
    broker.stop().await;
}

async fn herald(
    broker: &TestBroker,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(binary("herald"))
        .arg("--broker")
        .arg(broker.addr().to_string())
        .args(args)
        .env_remove("HERALD_PASSWORD")
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_USER")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("herald runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_tokens_and_rules_and_logs_in_with_either() {
    let broker = auth_broker().await;
    let admin_env = [("HERALD_PASSWORD", ADMIN_PASSWORD)];

    // Users.
    let env = [
        ("HERALD_PASSWORD", ADMIN_PASSWORD),
        ("HERALD_NEW_PASSWORD", "alice-pw"),
    ];
    let (ok, out, err) = herald(&broker, &env, &as_admin(&["user", "add", "alice"])).await;
    assert!(ok, "{err}");
    assert_eq!(out, "created user alice\n");
    let (ok, _, err) = herald(&broker, &admin_env, &as_admin(&["user", "add", "bob"])).await;
    assert!(!ok && err.contains("HERALD_NEW_PASSWORD"), "{err}");
    let env = [
        ("HERALD_PASSWORD", ADMIN_PASSWORD),
        ("HERALD_NEW_PASSWORD", "ops-pw"),
    ];
    let (ok, _, err) = herald(&broker, &env, &as_admin(&["user", "add", "ops", "--admin"])).await;
    assert!(ok, "{err}");
    let (ok, out, _) = herald(&broker, &admin_env, &as_admin(&["user", "list"])).await;
    assert!(ok);
    assert_eq!(out, "admin\tadmin\nalice\tuser\nops\tadmin\n");
    // The login flag may follow the command as well.
    let (ok, again, err) = herald(&broker, &admin_env, &["user", "list", "--user", "admin"]).await;
    assert!(ok && again == out, "{err}");

    // Logging in: a password without HERALD_PASSWORD, a wrong one, the right one.
    let (ok, _, err) = herald(&broker, &[], &["--user", "alice", "topic", "list"]).await;
    assert!(!ok && err.contains("HERALD_PASSWORD"), "{err}");
    let (ok, _, err) = herald(
        &broker,
        &[("HERALD_PASSWORD", "nope")],
        &["--user", "alice", "topic", "list"],
    )
    .await;
    assert!(!ok && err.contains("AuthenticationFailed"), "{err}");
    assert!(!err.contains("nope"), "the password shows in {err}");
    let (ok, _, err) = herald(&broker, &[], &["topic", "list"]).await;
    assert!(!ok && err.contains("AuthenticationRequired"), "{err}");
    let alice_env = [("HERALD_PASSWORD", "alice-pw")];
    let (ok, _, err) = herald(
        &broker,
        &alice_env,
        &["--user", "alice", "publish", "orders", "hello"],
    )
    .await;
    assert!(
        !ok && err.contains("NotAuthorized") && err.contains("describe"),
        "{err}"
    );

    // Rules.
    let args = as_admin(&[
        "acl",
        "add",
        "--user",
        "alice",
        "--topic",
        "orders",
        "--allow",
        "publish,create,describe",
    ]);
    let (ok, out, err) = herald(&broker, &admin_env, &args).await;
    assert!(ok, "{err}");
    let id = out.split('\t').next().unwrap().to_string();
    assert_eq!(
        out,
        format!("{id}\talice\torders\tpublish,create,describe\n")
    );
    let (ok, _, err) = herald(
        &broker,
        &admin_env,
        &as_admin(&[
            "acl", "add", "--user", "alice", "--topic", "orders", "--allow", "read",
        ]),
    )
    .await;
    assert!(!ok && err.contains("\"read\" is not an operation"), "{err}");
    let (ok, out, err) = herald(
        &broker,
        &alice_env,
        &["--user", "alice", "publish", "orders", "hello"],
    )
    .await;
    assert!(ok && out.is_empty(), "{out}{err}");
    let (ok, out, _) = herald(&broker, &admin_env, &as_admin(&["acl", "list"])).await;
    assert!(ok);
    assert_eq!(
        out,
        format!("{id}\talice\torders\tpublish,create,describe\n")
    );

    // Tokens: the token alone on stdout's first line, its id on stderr.
    let (ok, out, err) = herald(
        &broker,
        &admin_env,
        &as_admin(&["token", "create", "--user", "alice", "--ttl", "1h"]),
    )
    .await;
    assert!(ok, "{err}");
    let token = out.lines().next().unwrap().to_string();
    assert!(token.starts_with("hrld_") && token.len() == 48, "{out}");
    let token_id = err.trim().to_string();
    let (ok, out, _) = herald(&broker, &admin_env, &as_admin(&["token", "list"])).await;
    assert!(ok);
    let line = out.lines().next().unwrap();
    assert!(line.starts_with(&format!("{token_id}\talice\t")), "{out}");
    assert!(!line.ends_with("never"), "{line}");
    assert!(!out.contains(&token), "a listing shows the token itself");
    let (ok, out, err) = herald(&broker, &[], &["--token", &token, "topic", "list"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "orders\n");
    let (ok, out, err) = herald(
        &broker,
        &[("HERALD_TOKEN", token.as_str())],
        &["topic", "describe", "orders"],
    )
    .await;
    assert!(ok && out.contains("partition"), "{out}{err}");
    let (ok, _, err) = herald(
        &broker,
        &admin_env,
        &as_admin(&["token", "revoke", &token_id]),
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = herald(&broker, &[], &["--token", &token, "topic", "list"]).await;
    assert!(!ok && err.contains("AuthenticationFailed"), "{err}");
    assert!(!err.contains(&token), "the token shows in {err}");

    // Passwords change; rules and users go.
    let env = [
        ("HERALD_PASSWORD", ADMIN_PASSWORD),
        ("HERALD_NEW_PASSWORD", "new-pw"),
    ];
    let (ok, _, err) = herald(&broker, &env, &as_admin(&["user", "passwd", "alice"])).await;
    assert!(ok, "{err}");
    let (ok, _, _) = herald(&broker, &alice_env, &["--user", "alice", "topic", "list"]).await;
    assert!(!ok);
    let (ok, _, err) = herald(
        &broker,
        &[("HERALD_PASSWORD", "new-pw")],
        &["--user", "alice", "topic", "list"],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = herald(&broker, &admin_env, &as_admin(&["acl", "remove", &id])).await;
    assert!(ok, "{err}");
    let (ok, out, _) = herald(&broker, &admin_env, &as_admin(&["acl", "list"])).await;
    assert!(ok && out.is_empty(), "{out}");
    let (ok, _, err) = herald(&broker, &admin_env, &as_admin(&["user", "delete", "alice"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = herald(&broker, &admin_env, &as_admin(&["user", "delete", "alice"])).await;
    assert!(!ok && err.contains("no user \"alice\""), "{err}");
    broker.stop().await;
}

/// `args` run as the administrator (with its password in `HERALD_PASSWORD`).
fn as_admin<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--user", "admin"];
    all.extend_from_slice(args);
    all
}

async fn broker_exits(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(binary("herald-broker"))
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--min-free-disk-bytes", "1048576"])
            .args(args)
            .env_remove("HERALD_ADMIN_PASSWORD")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the broker exits")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn listening_beyond_loopback_needs_auth_or_an_explicit_escape() {
    let (code, err) = broker_exits(&["--listen", "0.0.0.0:0", "--http-listen", "off"], &[]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--auth") && err.contains("--allow-anonymous"),
        "{err}"
    );
    let (code, err) = broker_exits(
        &["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--auth"), "{err}");
    // --auth with no users and no administrator's password: refused.
    let (code, err) = broker_exits(
        &["--listen", "127.0.0.1:0", "--http-listen", "off", "--auth"],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("HERALD_ADMIN_PASSWORD"), "{err}");

    // With --allow-anonymous it starts, and says what that means.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("herald-broker"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args([
            "--min-free-disk-bytes",
            "1048576",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "off",
            "--allow-anonymous",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("WARN") && line.contains("without authentication") {
                return line;
            }
        }
        panic!("no warning");
    })
    .await
    .expect("a warning in time");
    assert!(warned.contains("0.0.0.0"), "{warned}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_logged_with_who_and_where_and_no_secret_is_ever_logged() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let admin_password = "admin-Secret-1";
    let mut broker = Command::new(binary("herald-broker"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--min-free-disk-bytes", "1048576", "--auth"])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("HERALD_ADMIN_PASSWORD", admin_password)
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut stdout = tokio::io::BufReader::new(broker.stdout.take().unwrap()).lines();
    let mut addresses = Vec::new();
    for _ in 0..2 {
        let line = stdout.next_line().await.unwrap().unwrap();
        addresses.push(line.rsplit(' ').next().unwrap().to_string());
    }
    let (tcp, http) = (addresses[0].clone(), addresses[1].clone());
    let mut stderr = broker.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });

    let run = |env: Vec<(&'static str, String)>, args: Vec<String>| {
        let tcp = tcp.clone();
        async move {
            let out = Command::new(binary("herald"))
                .arg("--broker")
                .arg(&tcp)
                .args(&args)
                .env_remove("HERALD_TOKEN")
                .envs(env)
                .output()
                .await
                .unwrap();
            (out.status.success(), String::from_utf8(out.stdout).unwrap())
        }
    };
    let admin = || vec![("HERALD_PASSWORD", admin_password.to_string())];
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut env = admin();
    env.push(("HERALD_NEW_PASSWORD", "alice-Secret-2".into()));
    assert!(
        run(env, args(&["--user", "admin", "user", "add", "alice"]))
            .await
            .0
    );
    let (ok, out) = run(
        admin(),
        args(&["--user", "admin", "token", "create", "--user", "alice"]),
    )
    .await;
    assert!(ok);
    let token = out.trim().to_string();
    // A wrong password (SCRAM), a good token, a made-up token, a wrong Basic password.
    let wrong = vec![("HERALD_PASSWORD", "wrong-Secret-3".to_string())];
    assert!(
        !run(wrong, args(&["--user", "alice", "topic", "list"]))
            .await
            .0
    );
    assert!(
        run(vec![], args(&["--token", &token, "topic", "list"]))
            .await
            .0
    );
    let made_up = "hrld_madeupmadeupmadeupmadeupmadeupmadeupmad";
    assert!(
        !run(vec![], args(&["--token", made_up, "topic", "list"]))
            .await
            .0
    );
    let curl = Command::new("curl")
        .args(["-sS", "-u", "alice:basic-Secret-4"])
        .arg(format!("http://{http}/v1/topics"))
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&curl.stdout).contains("AuthenticationFailed"));

    broker.kill().await.unwrap();
    let log = log.await.unwrap();
    for secret in [
        admin_password,
        "alice-Secret-2",
        "wrong-Secret-3",
        "basic-Secret-4",
        &token,
        made_up,
        &token[5..],
    ] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("authentication failed"))
        .collect();
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(
        failures[0].contains("user=\"alice\"")
            && failures[0].contains("mechanism=\"SCRAM-SHA-256\"")
    );
    assert!(failures[1].contains("mechanism=\"TOKEN\""));
    assert!(failures[2].contains("user=\"alice\"") && failures[2].contains("mechanism=\"basic\""));
    assert!(
        failures.iter().all(|l| l.contains("peer=127.0.0.1:")),
        "{failures:#?}"
    );

    // Nor do the flags' help texts show a secret from the environment.
    let help = Command::new(binary("herald"))
        .arg("--help")
        .env("HERALD_TOKEN", made_up)
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--token") && !help.contains(made_up),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_measures_connections_per_second_with_a_scram_login() {
    let broker = auth_broker().await;
    let args = [
        "--user",
        "admin",
        "bench",
        "--scenario",
        "connect",
        "--connections",
        "30",
        "--producers",
        "2",
        "--json",
    ];
    let (ok, out, err) = herald(&broker, &[("HERALD_PASSWORD", ADMIN_PASSWORD)], &args).await;
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let connect = &report["connect"];
    assert_eq!(connect["login"], "scram-sha-256", "{report}");
    assert_eq!(connect["connections"], 30);
    assert_eq!(connect["workers"], 2);
    assert!(connect["per_second"].as_f64().unwrap() > 0.0, "{report}");
    let latency = &connect["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
    // Without a login, the run fails instead of measuring refusals.
    let (ok, _, err) = herald(&broker, &[], &args[2..]).await;
    assert!(!ok && err.contains("AuthenticationRequired"), "{err}");
    broker.stop().await;
}
