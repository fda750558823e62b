#!/usr/bin/env python3
"""Generates proto-client/src/wire/shapes.rs from the kafka-protocol crate.

Why: kafka-protocol 0.18 decodes array counts straight into
`Vec::with_capacity(n)`, so a hostile or corrupt count aborts the process.
Rill walks each response's wire shape first (wire/shape.rs) and bounds every
count by the bytes left. The shapes below are read off the crate's generated
`impl Decodable` blocks, so they match the decoder field for field; the
round-trip property test in wire/shape.rs checks that claim.

Usage: scripts/gen-shapes.py > proto-client/src/wire/shapes.rs
Run it again after bumping kafka-protocol, with the list below updated to
every response type (and embedded message) the client decodes.
"""
import glob
import os
import re
import sys

RESPONSES = [
    ("api_versions_response", "ApiVersionsResponse"),
    ("metadata_response", "MetadataResponse"),
    ("create_topics_response", "CreateTopicsResponse"),
    ("delete_topics_response", "DeleteTopicsResponse"),
    ("list_offsets_response", "ListOffsetsResponse"),
    ("produce_response", "ProduceResponse"),
    ("init_producer_id_response", "InitProducerIdResponse"),
    ("fetch_response", "FetchResponse"),
    ("find_coordinator_response", "FindCoordinatorResponse"),
    ("join_group_response", "JoinGroupResponse"),
    ("sync_group_response", "SyncGroupResponse"),
    ("heartbeat_response", "HeartbeatResponse"),
    ("leave_group_response", "LeaveGroupResponse"),
    ("offset_commit_response", "OffsetCommitResponse"),
    ("offset_fetch_response", "OffsetFetchResponse"),
    ("offset_for_leader_epoch_response", "OffsetForLeaderEpochResponse"),
    ("sasl_handshake_response", "SaslHandshakeResponse"),
    ("sasl_authenticate_response", "SaslAuthenticateResponse"),
    ("list_groups_response", "ListGroupsResponse"),
    ("describe_groups_response", "DescribeGroupsResponse"),
    ("delete_groups_response", "DeleteGroupsResponse"),
    ("offset_delete_response", "OffsetDeleteResponse"),
    ("describe_configs_response", "DescribeConfigsResponse"),
    ("incremental_alter_configs_response", "IncrementalAlterConfigsResponse"),
    ("create_partitions_response", "CreatePartitionsResponse"),
    ("delete_records_response", "DeleteRecordsResponse"),
    # KIP-848 groups.
    ("consumer_group_heartbeat_response", "ConsumerGroupHeartbeatResponse"),
    ("consumer_group_describe_response", "ConsumerGroupDescribeResponse"),
    # Transactions.
    ("add_partitions_to_txn_response", "AddPartitionsToTxnResponse"),
    ("add_offsets_to_txn_response", "AddOffsetsToTxnResponse"),
    ("end_txn_response", "EndTxnResponse"),
    ("txn_offset_commit_response", "TxnOffsetCommitResponse"),
    # Embedded in JoinGroup / SyncGroup: written by other group members.
    ("consumer_protocol_subscription", "ConsumerProtocolSubscription"),
    ("consumer_protocol_assignment", "ConsumerProtocolAssignment"),
]

PRIMS = {
    "Int8": "Int8", "Int16": "Int16", "Int32": "Int32", "Int64": "Int64",
    "UInt16": "UInt16", "UInt32": "UInt32", "Float64": "Float64",
    "Boolean": "Bool", "Uuid": "Uuid",
    "String": "Str", "CompactString": "Str",
    "Bytes": "Bytes", "CompactBytes": "Bytes",
}


def crate_dir():
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    found = sorted(glob.glob(f"{home}/registry/src/*/kafka-protocol-0.18.0"))
    if not found:
        sys.exit("kafka-protocol-0.18.0 not in the cargo registry; run `cargo fetch` first")
    return found[0]


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def struct_fields(src):
    """struct name -> {field name: rust type}"""
    out = {}
    for m in re.finditer(r"pub struct (\w+) \{\n(.*?)\n\}", src, re.S):
        fields = {}
        for f in re.finditer(r"^    pub (\w+): (.+),$", m.group(2), re.M):
            fields[f.group(1)] = f.group(2)
        out[m.group(1)] = fields
    return out


def decode_bodies(src):
    out = {}
    pat = r"impl Decodable for (\w+) \{\n    fn decode<B: ByteBuf>\(buf: &mut B, version: i16\) -> Result<Self> \{\n(.*?)\n        Ok\(Self \{"
    for m in re.finditer(pat, src, re.S):
        out[m.group(1)] = m.group(2)
    return out


def element_type(rust_type):
    m = re.fullmatch(r"(?:Option<)?Vec<(\w+)>>?", rust_type.strip())
    if m:
        return m.group(1)
    m = re.fullmatch(r"Option<(\w+)>", rust_type.strip())
    if m:
        return m.group(1)
    return rust_type.strip()


def kind_of(block, field_type):
    """The Kind expression for the decode calls inside a block of code."""
    kinds = set()
    for m in re.finditer(r"types::(Compact)?Array\(types::(\w+)", block):
        inner = m.group(2)
        if inner == "Struct":
            kinds.add(f"Kind::Array(Elem::Struct(&{snake(element_type(field_type))}))")
        else:
            kinds.add(f"Kind::Array(Elem::Prim(Prim::{PRIMS[inner]}))")
    if kinds:
        assert len(kinds) == 1, (block, kinds)
        return kinds.pop()
    if re.search(r"types::OptionStruct \{ version \}\.decode", block):
        return f"Kind::OptionStruct(&{snake(element_type(field_type))})"
    if re.search(r"types::Struct \{ version \}\.decode", block):
        return f"Kind::Struct(&{snake(element_type(field_type))})"
    for m in re.finditer(r"types::(\w+)\.decode", block):
        kinds.add(f"Kind::Prim(Prim::{PRIMS[m.group(1)]})")
    assert len(kinds) == 1, (block, kinds)
    return kinds.pop()


def versions_of(cond, lo, hi):
    cond = cond.strip()
    m = re.fullmatch(r"version >= (\d+) && version <= (\d+)", cond)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"version >= (\d+)", cond)
    if m:
        return int(m.group(1)), hi
    m = re.fullmatch(r"version <= (\d+)", cond)
    if m:
        return lo, int(m.group(1))
    m = re.fullmatch(r"version == (\d+)", cond)
    if m:
        return int(m.group(1)), int(m.group(1))
    raise AssertionError(f"unknown version condition: {cond}")


def statements(body):
    """Top-level statements of a decode body (8-space indentation)."""
    lines = body.split("\n")
    out, cur, depth = [], [], 0
    for line in lines:
        cur.append(line)
        depth += line.count("{") - line.count("}")
        depth += line.count("(") - line.count(")")
        if depth == 0 and (line.rstrip().endswith(";") or line.rstrip().endswith("}")):
            out.append("\n".join(cur))
            cur = []
    assert not "".join(cur).strip(), cur
    return out


def parse_struct(name, body, fields):
    m = re.match(r"\s*if version < (\d+) \|\| version > (\d+) \{", body)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
    else:
        # A message of one version: `if version != N {`.
        m = re.match(r"\s*if version != (\d+) \{", body)
        lo = hi = int(m.group(1))
    field_shapes, tagged, flexible = [], [], None
    for stmt in statements(body)[1:]:
        s = stmt.strip()
        if s.startswith("let mut ") or s == "":
            continue
        if s.startswith("let num_tagged_fields"):
            # Flexible in every version (no `if version >= N` around it).
            flexible = lo
            continue
        m = re.match(r"let (\w+) = if (.*?) \{\n(.*)\n        \} else \{\n(.*)\n        \};$", s, re.S)
        if m:
            fname, cond, block, other = m.group(1), m.group(2), m.group(3), m.group(4)
            if "types::" not in block:
                raise AssertionError(f"{name}.{fname}: no decode in present branch")
            if "types::" in other:
                # `if version >= F { compact } else { plain }`: present in every
                # version, only the encoding follows flexibility
                assert kind_of(block, fields[fname]) == kind_of(other, fields[fname]), (name, fname)
                vmin, vmax = lo, hi
            else:
                vmin, vmax = versions_of(cond, lo, hi)
            field_shapes.append((fname, vmin, vmax, kind_of(block, fields[fname])))
            continue
        m = re.match(r"let (\w+) = (types::.*);$", s, re.S)
        if m:
            fname = m.group(1)
            field_shapes.append((fname, lo, hi, kind_of(m.group(2), fields[fname])))
            continue
        m = re.match(r"if version >= (\d+) \{\n\s*let num_tagged_fields", s) or (
            flexible == lo and re.match(r"for _ in 0\.\.num_tagged_fields()", s)
        )
        if m:
            if m.group(1):
                flexible = int(m.group(1))
            for arm in re.finditer(r"\n\s*(\d+) => \{\n(.*?)\n\s*\}", s, re.S):
                tag, block = int(arm.group(1)), arm.group(2)
                fname = re.search(r"(\w+) =", block).group(1)
                # Some tags are valid in some versions only; outside them
                # the decoder fails (`bail!("Tag {} is not valid ...")`).
                vm = re.search(r"if (version [^{]*) \{", block)
                vmin, vmax = versions_of(vm.group(1), lo, hi) if vm else (lo, hi)
                if vm:
                    assert "is not valid for version" in s, (name, fname)
                tagged.append((tag, fname, vmin, vmax, kind_of(block, fields[fname])))
            continue
        raise AssertionError(f"{name}: unparsed statement:\n{s}")
    return lo, hi, flexible, field_shapes, tagged


def main():
    root = crate_dir()
    emitted = {}  # (module, struct) -> shape
    order = []
    static_of = {}  # (module, struct) -> static name
    used = {}  # static name -> (module, struct)

    def static_name(module, name):
        key = (module, name)
        if key not in static_of:
            candidate = snake(name)
            if candidate in used and used[candidate] != key:
                # Same struct name in two messages (LeaderIdAndEpoch…).
                candidate = f"{module.upper()}_{candidate}"
            used[candidate] = key
            static_of[key] = candidate
        return static_of[key]

    def visit(module, name):
        if (module, name) in emitted:
            return
        src = open(f"{root}/src/messages/{module}.rs").read()
        fields = struct_fields(src)[name]
        body = decode_bodies(src)[name]
        emitted[(module, name)] = None
        lo, hi, flexible, field_shapes, tagged = parse_struct(name, body, fields)
        def resolve(kind):
            for dep in re.findall(r"&([A-Z_]+)\)", kind):
                camel = camel_of[module][dep]
                visit(module, camel)
                kind = kind.replace(f"&{dep})", f"&{static_name(module, camel)})")
            return kind
        field_shapes = [(f, a, b, resolve(k)) for f, a, b, k in field_shapes]
        tagged = [(t, f, a, b, resolve(k)) for t, f, a, b, k in tagged]
        emitted[(module, name)] = (lo, hi, flexible, field_shapes, tagged)
        static_name(module, name)
        order.append((module, name))

    camel_of = {}
    for module, _ in RESPONSES:
        src = open(f"{root}/src/messages/{module}.rs").read()
        camel_of[module] = {snake(struct): struct for struct in struct_fields(src)}
    for module, name in RESPONSES:
        visit(module, name)

    print("// @generated by scripts/gen-shapes.py from kafka-protocol 0.18.0; do not edit.")
    print("//! Wire shapes of the responses this client decodes (see `shape`).")
    print()
    print("use super::shape::{Elem, Field, Kind, Prim, StructShape, Tagged};")
    for module, name in order:
        lo, hi, flexible, field_shapes, tagged = emitted[(module, name)]
        print()
        print(f"pub(crate) static {static_of[(module, name)]}: StructShape = StructShape {{")
        print(f'    name: "{name}",')
        print(f"    versions: ({lo}, {hi}),")
        print(f"    flexible_since: {flexible if flexible is not None else 'i16::MAX'},")
        print("    fields: &[")
        for fname, vmin, vmax, kind in field_shapes:
            print(f'        Field {{ name: "{fname}", versions: ({vmin}, {vmax}), kind: {kind} }},')
        print("    ],")
        print("    tagged: &[")
        for tag, fname, vmin, vmax, kind in tagged:
            print(f'        Tagged {{ tag: {tag}, name: "{fname}", versions: ({vmin}, {vmax}), kind: {kind} }},')
        print("    ],")
        print("};")

main()
