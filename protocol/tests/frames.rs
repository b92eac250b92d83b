//! Every frame type round-trips; every truncation is "need more bytes"; random input never
//! panics the decoder.

use bytes::{Bytes, BytesMut};
use herald_protocol::*;
use proptest::prelude::*;
use std::collections::HashSet;
use tokio_util::codec::Decoder;

/// A fixed batch: explicit timestamps keep every call byte-for-byte identical.
fn batch() -> Bytes {
    encode_batch(&[
        Record {
            timestamp: 1_700_000_000_000,
            ..Record::new("a payload").with_key("k").with_header("h", "v")
        },
        Record {
            timestamp: 1_700_000_000_001,
            ..Record::new(Bytes::from_static(b"\xff\x00binary"))
        },
    ])
}

/// One example of every frame type, with every field set to something other than its default.
fn samples() -> Vec<Frame> {
    let s = |x: &str| x.to_string();
    let range = OffsetRange {
        partition: 3,
        start: 10,
        end: 20,
    };
    vec![
        Hello {
            min_version: 1,
            max_version: 2,
            client_id: s("c"),
            heartbeat_interval_ms: 5,
            session_timeout_ms: 15,
        }
        .into(),
        HelloOk {
            version: 1,
            broker_version: s("0.1"),
            session_id: 9,
            heartbeat_interval_ms: 3,
            session_timeout_ms: 10,
            max_frame_bytes: 100,
            max_message_bytes: 50,
        }
        .into(),
        Heartbeat {}.into(),
        GoingAway {
            reconnect_after_ms: 250,
            reason: s("shutdown"),
        }
        .into(),
        ErrorFrame::offset_out_of_range(5, 9, "below the first offset").into(),
        OkReply {}.into(),
        CreateTopic {
            name: s("t"),
            partitions: 4,
            retention: Retention {
                max_age_ms: 1,
                max_bytes: 2,
                max_messages: 3,
            },
        }
        .into(),
        DeleteTopic { name: s("t") }.into(),
        ListTopics {}.into(),
        TopicList {
            topics: vec![TopicSummary {
                name: s("t"),
                partitions: 2,
            }],
        }
        .into(),
        DescribeTopic { name: s("t") }.into(),
        TopicInfo {
            name: s("t"),
            retention: Retention {
                max_age_ms: 7,
                ..Retention::default()
            },
            partitions: vec![PartitionInfo {
                partition: 0,
                first_offset: 1,
                next_offset: 5,
                bytes: 99,
            }],
        }
        .into(),
        Publish {
            topic: s("t"),
            partition: ANY_PARTITION,
            producer_id: 77,
            sequence: 3,
            batch: batch(),
        }
        .into(),
        PublishOk {
            durability: Durability::Synced,
            runs: vec![OffsetRun {
                partition: 1,
                base_offset: 100,
                count: 2,
            }],
        }
        .into(),
        Fetch {
            topic: s("t"),
            partition: 1,
            offset: 5,
            max_messages: 10,
            max_bytes: 1000,
            max_wait_ms: 500,
            min_bytes: 1,
        }
        .into(),
        FetchOk {
            partition: 1,
            first_offset: 0,
            next_offset: 7,
            batches: batch(),
        }
        .into(),
        JoinGroup {
            topic: s("t"),
            group: s("g"),
            member_id: s("m"),
            start: StartPosition::Latest,
        }
        .into(),
        Assignment {
            member_id: s("m"),
            generation: 4,
            partitions: vec![AssignedPartition {
                partition: 2,
                committed: 8,
            }],
        }
        .into(),
        SyncGroup {
            topic: s("t"),
            group: s("g"),
            member_id: s("m"),
            generation: 4,
            released: vec![1, 2],
        }
        .into(),
        LeaveGroup {
            topic: s("t"),
            group: s("g"),
            member_id: s("m"),
        }
        .into(),
        Commit {
            topic: s("t"),
            group: s("g"),
            member_id: s("m"),
            generation: 4,
            offsets: vec![PartitionOffset {
                partition: 1,
                offset: 6,
            }],
        }
        .into(),
        CommitOk { generation: 5 }.into(),
        Subscribe {
            topic: s("t"),
            group: s("g"),
            prefetch_count: 100,
            prefetch_bytes: 4096,
            start: StartPosition::Latest,
        }
        .into(),
        Subscribed {
            subscription_id: 12,
            ack_timeout_ms: 30_000,
            max_deliveries: 20,
        }
        .into(),
        Unsubscribe {
            subscription_id: 12,
        }
        .into(),
        Deliver {
            subscription_id: 12,
            partition: 0,
            delivery_counts: vec![1, 2],
            batch: batch(),
        }
        .into(),
        Ack {
            subscription_id: 12,
            ranges: vec![range.clone()],
        }
        .into(),
        Nack {
            subscription_id: 12,
            ranges: vec![range.clone()],
            delay_ms: 1000,
        }
        .into(),
        Reject {
            subscription_id: 12,
            ranges: vec![range.clone()],
            reason: s("bad"),
        }
        .into(),
        Touch {
            subscription_id: 12,
            ranges: vec![range],
            extend_ms: 60_000,
        }
        .into(),
        CreateGroup {
            topic: s("t"),
            group: s("g"),
            mode: GroupMode::Push,
            start: StartPosition::Latest,
            ack_timeout_ms: 5,
            max_deliveries: 3,
            dead_letter: s("t.dlq"),
        }
        .into(),
        ListGroups { topic: s("t") }.into(),
        GroupList {
            groups: vec![GroupSummary {
                name: s("g"),
                mode: GroupMode::Push,
                members: 2,
            }],
        }
        .into(),
        DescribeGroup {
            topic: s("t"),
            group: s("g"),
        }
        .into(),
        GroupInfo {
            topic: s("t"),
            group: s("g"),
            mode: GroupMode::Pull,
            generation: 3,
            ack_timeout_ms: 1,
            max_deliveries: 2,
            dead_letter: s("d"),
            members: vec![MemberInfo {
                member_id: s("m"),
                address: s("127.0.0.1:1"),
                partitions: vec![0],
                in_flight: 4,
                oldest_unacked_ms: 5,
            }],
            partitions: vec![GroupPartitionInfo {
                partition: 0,
                owner: s("m"),
                committed: 3,
                end: 9,
                lag: 6,
            }],
            redelivered: 7,
            dead_lettered: 1,
        }
        .into(),
        ResetGroup {
            topic: s("t"),
            group: s("g"),
            to: ResetTarget::Offset(42),
        }
        .into(),
        DeleteGroup {
            topic: s("t"),
            group: s("g"),
        }
        .into(),
        SaslStart {
            mechanism: s("SCRAM-SHA-256"),
            payload: Bytes::from_static(b"n,,n=alice,r=abc"),
        }
        .into(),
        SaslChallenge {
            payload: Bytes::from_static(b"r=abcdef,s=c2FsdA==,i=4096"),
        }
        .into(),
        SaslContinue {
            payload: Bytes::from_static(b"c=biws,r=abcdef,p=cHJvb2Y="),
        }
        .into(),
        SaslOk {
            user: s("alice"),
            admin: true,
            payload: Bytes::from_static(b"v=c2lnbmF0dXJl"),
        }
        .into(),
        CreateUser {
            name: s("alice"),
            password: s("pw"),
            admin: true,
        }
        .into(),
        SetPassword {
            name: s("alice"),
            password: s("pw2"),
        }
        .into(),
        DeleteUser { name: s("alice") }.into(),
        ListUsers {}.into(),
        UserList {
            users: vec![UserSummary {
                name: s("alice"),
                admin: true,
            }],
        }
        .into(),
        CreateToken {
            user: s("alice"),
            ttl_ms: 60_000,
        }
        .into(),
        TokenCreated {
            token: s("hrld_x"),
            summary: TokenSummary {
                id: s("a1b2"),
                user: s("alice"),
                created_ms: 1,
                expires_ms: 2,
            },
        }
        .into(),
        ListTokens {}.into(),
        TokenList {
            tokens: vec![TokenSummary {
                id: s("a1b2"),
                user: s("alice"),
                created_ms: 1,
                expires_ms: 0,
            }],
        }
        .into(),
        RevokeToken { id: s("a1b2") }.into(),
        AddAcl {
            rule: AclRule {
                id: 0,
                user: s("alice"),
                pattern: s("orders.*"),
                operations: vec![s("publish"), s("consume")],
            },
        }
        .into(),
        AclRule {
            id: 7,
            user: s("alice"),
            pattern: s("orders.*"),
            operations: vec![s("publish")],
        }
        .into(),
        ListAcls {}.into(),
        AclList {
            rules: vec![AclRule {
                id: 7,
                user: s("alice"),
                pattern: s("*"),
                operations: vec![s("describe")],
            }],
        }
        .into(),
        RemoveAcl { id: 7 }.into(),
        GetStats {}.into(),
        Stats {
            json: s("{\"uptime_ms\":1}"),
        }
        .into(),
    ]
}

#[test]
fn samples_cover_every_opcode() {
    let covered: HashSet<Opcode> = samples().iter().map(Frame::opcode).collect();
    for opcode in Opcode::ALL {
        assert!(covered.contains(opcode), "no sample for {opcode:?}");
    }
}

#[test]
fn every_frame_round_trips() {
    for (i, frame) in samples().into_iter().enumerate() {
        let message = Message::new(i as u32 + 1, frame);
        let mut buf = BytesMut::from(&message.to_bytes()[..]);
        let raw = FrameCodec::default()
            .decode(&mut buf)
            .unwrap()
            .expect("a whole frame");
        assert!(buf.is_empty());
        assert_eq!(raw.correlation_id, message.correlation_id);
        assert_eq!(raw.decode().unwrap(), message.frame);
    }
}

#[test]
fn every_truncation_needs_more_bytes() {
    for frame in samples() {
        let bytes = Message::new(1, frame).to_bytes();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let got = FrameCodec::default().decode(&mut buf).unwrap();
            assert_eq!(got, None, "cut at {cut} of {}", bytes.len());
        }
    }
}

#[test]
fn frames_decode_back_to_back() {
    let mut buf = BytesMut::new();
    for frame in samples() {
        Message::new(7, frame).encode(&mut buf);
    }
    let mut codec = FrameCodec::default();
    let mut decoded = Vec::new();
    while let Some(raw) = codec.decode(&mut buf).unwrap() {
        decoded.push(raw.decode().unwrap());
    }
    assert_eq!(decoded, samples());
}

#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        CodecError::FrameTooLarge {
            len: 0xffff_ffff,
            max: 1024
        }
    ));
    assert!(
        buf.capacity() < 1024,
        "nothing was reserved for the hostile frame"
    );
}

#[test]
fn length_shorter_than_header_is_corrupt() {
    let mut buf = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
    assert!(matches!(
        FrameCodec::default().decode(&mut buf),
        Err(CodecError::FrameTooShort(3))
    ));
}

#[test]
fn unknown_opcode_and_bad_body_are_request_errors() {
    let raw = RawFrame {
        opcode: 0x7777,
        flags: 0,
        correlation_id: 1,
        body: Bytes::new(),
    };
    assert_eq!(raw.decode(), Err(DecodeError::UnknownOpcode(0x7777)));
    let raw = RawFrame {
        opcode: Opcode::Fetch as u16,
        flags: 0,
        correlation_id: 1,
        body: Bytes::from_static(b"\x00"),
    };
    assert_eq!(raw.decode(), Err(DecodeError::Truncated));
    let mut body = BytesMut::new();
    Message::new(1, OkReply {}).encode(&mut body);
    let raw = RawFrame {
        opcode: Opcode::Heartbeat as u16,
        flags: 0,
        correlation_id: 1,
        body: Bytes::from_static(b"xx"),
    };
    assert_eq!(raw.decode(), Err(DecodeError::TrailingBytes(2)));
}

#[test]
fn error_frame_details_decode() {
    let err = ErrorFrame::offset_out_of_range(3, 8, "x");
    assert_eq!(err.error_code(), Some(ErrorCode::OffsetOutOfRange));
    assert_eq!(err.offset_bounds(), Some((3, 8)));
    assert_eq!(
        ErrorFrame::new(ErrorCode::UnknownTopic, "x").offset_bounds(),
        None
    );
    let version = ErrorFrame::unsupported_version(1, 1);
    assert!(version.message.contains("1..=1"));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        let mut codec = FrameCodec::new(4096);
        while let Ok(Some(raw)) = codec.decode(&mut buf) {
            if let Ok(Frame::Publish(p)) = raw.decode() {
                if let Ok(batch) = Batch::parse(p.batch) {
                    let _ = batch.validate();
                }
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(index in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let frames = samples();
        let bytes = Message::new(1, frames[index % frames.len()].clone()).to_bytes();
        let mut data = bytes.to_vec();
        for (at, value) in flips {
            let at = at % data.len();
            data[at] = value;
        }
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(Some(raw)) = FrameCodec::new(1 << 20).decode(&mut buf) {
            match raw.decode() {
                Ok(Frame::Publish(Publish { batch, .. })) | Ok(Frame::Deliver(Deliver { batch, .. })) => {
                    if let Ok(batch) = Batch::parse(batch) {
                        let _ = batch.validate();
                        let _ = batch.slice(batch.base_offset + 1, 1, 64);
                    }
                }
                Ok(Frame::FetchOk(FetchOk { batches, .. })) => {
                    for batch in read_batches(batches).unwrap_or_default() {
                        let _ = batch.iter().count();
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn damaged_compressed_batches_are_refused_and_never_panic(
        payloads in proptest::collection::vec("[a-z ]{0,80}", 1..40),
        zstd in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 1..4),
    ) {
        let records: Vec<Record> = payloads.iter().map(|p| Record::new(p.clone())).collect();
        let codec = if zstd { Codec::Zstd } else { Codec::Lz4 };
        let good = encode_batch_with(&records, codec);
        let batch = Batch::parse(good.clone()).unwrap();
        let decoded: Vec<Record> = batch.iter().map(|r| r.unwrap().record).collect();
        prop_assert_eq!(&decoded, &records);
        // Damage anywhere in the records (the length, the checksum, the compressed bytes)
        // is refused; damage in the header may be, and never panics.
        let header = herald_protocol::record::BATCH_HEADER_LEN;
        let mut data = good.to_vec();
        let (at, flip) = flips[0];
        let at = header + at % (data.len() - header);
        data[at] ^= flip;
        let damaged = Batch::parse(data.clone().into()).unwrap();
        prop_assert!(damaged.validate().is_err());
        prop_assert!(damaged.slice(0, 1, 16).is_err());
        for (at, flip) in &flips {
            let mut data = good.to_vec();
            data[at % header] ^= flip;
            if let Ok(batch) = Batch::parse(data.into()) {
                let _ = batch.validate();
                let _ = batch.iter().count();
                let _ = batch.slice(batch.base_offset + 1, 1, 64);
            }
        }
    }

    #[test]
    fn hostile_authentication_payloads_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        scramish in "(n|y|p)?,,(n=[a-z=,0-9]{0,8})?,?(r=[ -~]{0,16})?(,[a-z]=[ -~]{0,8}){0,3}",
    ) {
        use herald_protocol::scram::{Credentials, ServerFirst};
        for payload in [payload.clone(), scramish.clone().into_bytes()] {
            let start = Message::new(1, SaslStart { mechanism: "SCRAM-SHA-256".into(), payload: payload.clone().into() });
            let raw = FrameCodec::default().decode(&mut BytesMut::from(&start.to_bytes()[..])).unwrap().unwrap();
            let Frame::SaslStart(start) = raw.decode().unwrap() else { panic!("not a SaslStart") };
            let _ = sasl::parse_plain(&start.payload);
            let text = String::from_utf8_lossy(&start.payload);
            if let Ok(first) = ServerFirst::parse(&text) {
                let (_, expects) = first.answer(Credentials::derive("pw", b"salt".to_vec(), 4096));
                prop_assert!(expects.verify(&text).is_err());
            }
            let first = ServerFirst::parse("n,,n=alice,r=abc").unwrap();
            let (_, expects) = first.answer(Credentials::derive("pw", b"salt".to_vec(), 4096));
            prop_assert!(expects.verify(&text).is_err(), "a made-up client-final passed");
        }
    }

    #[test]
    fn random_records_round_trip(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20),
        stamp in any::<u64>(),
    ) {
        let records: Vec<Record> = payloads.iter().enumerate().map(|(i, p)| Record {
            timestamp: stamp.wrapping_add(i as u64 * 977),
            key: (i % 2 == 0).then(|| Bytes::from(p.clone())),
            headers: vec![(format!("h{i}"), Bytes::from(p.clone()))],
            payload: Bytes::from(p.clone()),
        }).collect();
        let batch = Batch::parse(encode_batch(&records)).unwrap();
        batch.validate().unwrap();
        let back: Vec<Record> = batch.iter().map(|r| r.unwrap().record).collect();
        prop_assert_eq!(back, records);
    }
}

const SPEC: &str = include_str!("../PROTOCOL.md");

#[test]
fn protocol_md_documents_every_frame_and_error_code() {
    for opcode in Opcode::ALL {
        let name = format!("{opcode:?}");
        let code = format!("`0x{:04x}`", *opcode as u16);
        let heading = format!("**{name}** {code}");
        assert!(
            SPEC.contains(&format!("| {code} | `{name}`")),
            "{name} missing from the opcode table"
        );
        assert!(SPEC.contains(&heading), "no body section for {name}");
    }
    for code in ErrorCode::ALL {
        let row = format!("| {}  | `{}`", *code as u16, code.name());
        assert!(
            SPEC.contains(&row),
            "{} missing from the error table",
            code.name()
        );
    }
}

#[test]
fn protocol_md_example_matches_the_encoder() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_id: "c".into(),
        ..Hello::default()
    };
    let expected: &[u8] = &[
        0, 0, 0, 0x17, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0x63, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(&Message::new(1, hello).to_bytes()[..], expected);
}
