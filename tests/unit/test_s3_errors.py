"""S3 error table and XML error responses; XML rendering and the safe parsing of request documents."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import botocore.session
import pytest
from botocore.parsers import RestXMLParser
from botocore.serialize import RestXMLSerializer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import xmlio
from gateway.errors import ERRORS, S3Error, error_body, error_response

S3_MODEL = botocore.session.get_session().get_service_model("s3")
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

EXPECTED_STATUS = {
    "AccessDenied": 403, "InvalidAccessKeyId": 403, "SignatureDoesNotMatch": 403, "RequestTimeTooSkewed": 403,
    "AuthorizationHeaderMalformed": 400, "AuthorizationQueryParametersError": 400, "MissingSecurityHeader": 400,
    "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "NoSuchVersion": 404,
    "BucketAlreadyExists": 409, "BucketAlreadyOwnedByYou": 409, "BucketNotEmpty": 409,
    "InvalidBucketName": 400, "InvalidArgument": 400, "InvalidDigest": 400, "BadDigest": 400,
    "XAmzContentSHA256Mismatch": 400, "InvalidRange": 416, "PreconditionFailed": 412, "NotModified": 304,
    "InvalidPart": 400, "InvalidPartOrder": 400, "EntityTooSmall": 400, "EntityTooLarge": 400,
    "MalformedXML": 400, "InvalidRequest": 400, "NotImplemented": 501, "MethodNotAllowed": 405,
    "ServiceUnavailable": 503, "SlowDown": 503, "InternalError": 500, "IncompleteBody": 400,
    "MissingContentLength": 411, "KeyTooLongError": 400, "InvalidObjectName": 400, "InvalidStorageClass": 400,
    "TooManyBuckets": 400, "MalformedPOSTRequest": 400, "InvalidEncodingType": 400,
}


@pytest.mark.parametrize(("code", "status"), sorted(EXPECTED_STATUS.items()))
def test_status_of_each_code(code: str, status: int) -> None:
    err = S3Error(code)
    assert err.status == status == ERRORS[code].status
    assert err.message == ERRORS[code].message


def test_table_is_sane() -> None:
    for code, spec in ERRORS.items():
        assert code and code[0].isupper() and " " not in code
        assert spec.status in (304, 400, 403, 404, 405, 409, 411, 412, 416, 500, 501, 503)
        assert spec.message


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        S3Error("NoSuchThing")


def test_error_response_body_and_headers() -> None:
    err = S3Error("NoSuchKey", extra={"Key": "a<&>b", "RequestTime": None}, headers={"x-amz-delete-marker": "true"})
    resp = error_response(err, "req-1", "/bucket/a<&>b")
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/xml"
    assert resp.headers["x-amz-request-id"] == "req-1"
    assert resp.headers["x-amz-delete-marker"] == "true"
    assert isinstance(resp.body, bytes)
    root = ET.fromstring(resp.body)
    assert root.tag == "Error"  # S3's error documents carry no namespace
    assert [c.tag for c in root] == ["Code", "Message", "Resource", "RequestId", "Key"]
    assert root.findtext("Key") == "a<&>b" and root.findtext("Resource") == "/bucket/a<&>b"


def test_error_resource_from_the_error_wins() -> None:
    root = ET.fromstring(error_body(S3Error("NoSuchUpload", resource="/b/k?uploadId=1"), "r", "/b/k"))
    assert root.findtext("Resource") == "/b/k?uploadId=1"


def test_no_body_for_head_and_not_modified() -> None:
    assert error_response(S3Error("NoSuchKey"), "r", "/b/k", head=True).body is None
    not_modified = error_response(S3Error("NotModified"), "r", "/b/k")
    assert not_modified.status == 304 and not_modified.body is None


def test_botocore_reads_our_errors() -> None:
    err = S3Error("SignatureDoesNotMatch", extra={"StringToSign": "AWS4-HMAC-SHA256\n..."})
    parsed = RestXMLParser().parse(
        {"body": error_body(err, "req-9", "/b"), "headers": {"x-amz-request-id": "req-9"}, "status_code": 403},
        S3_MODEL.operation_model("GetObject").output_shape,
    )
    assert parsed["Error"]["Code"] == "SignatureDoesNotMatch"
    assert parsed["Error"]["Message"] == ERRORS["SignatureDoesNotMatch"].message
    assert parsed["ResponseMetadata"]["RequestId"] == "req-9"


# ---------------------------------------------------------------- rendering

xml_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\ufffe\uffff").filter(
    lambda c: c in "\t\n\r" or ord(c) >= 0x20))


@settings(max_examples=200, deadline=None)
@given(value=xml_text)
def test_rendered_text_round_trips(value: str) -> None:
    root = ET.fromstring(xmlio.render("R", {"Key": value}))
    assert root.findtext(f"{NS}Key") == value


def test_control_characters_become_references() -> None:
    assert xmlio.escape("a\x01b\rc&") == "a&#x1;b&#xd;c&amp;"


def test_render_shapes() -> None:
    when = datetime(2009, 10, 12, 17, 50, 30, 123456, tzinfo=timezone(timedelta(hours=2)))
    body = xmlio.render("ListVersionsResult", [
        ("Name", "b"),
        ("IsTruncated", False),
        ("Prefix", ""),
        ("Marker", None),
        ("Version", {"Key": "k", "LastModified": when, "Size": 3}),
        ("DeleteMarker", {"Key": "k"}),
        ("Version", {"Key": "j"}),
        ("CommonPrefixes", [{"Prefix": "a/"}, {"Prefix": "b/"}]),
        ("Owner", [("ID", "1"), ("DisplayName", "me")]),
    ])
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<ListVersionsResult xmlns="')
    root = ET.fromstring(body)
    assert [c.tag.removeprefix(NS) for c in root] == [
        "Name", "IsTruncated", "Prefix", "Version", "DeleteMarker", "Version", "CommonPrefixes", "CommonPrefixes",
        "Owner",
    ]
    assert root.findtext(f"{NS}IsTruncated") == "false"
    assert root.findtext(f"{NS}Version/{NS}LastModified") == "2009-10-12T15:50:30.123Z"
    assert root.findtext(f"{NS}Owner/{NS}DisplayName") == "me"


def test_botocore_parses_rendered_listing() -> None:
    body = xmlio.render("ListBucketResult", {
        "Name": "bucket",
        "Prefix": "",
        "KeyCount": 2,
        "MaxKeys": 1000,
        "IsTruncated": False,
        "Contents": [
            {"Key": "a&b", "LastModified": datetime(2024, 1, 2, tzinfo=UTC), "ETag": '"x"', "Size": 5,
             "StorageClass": "STANDARD"},
            {"Key": "ü/<c>", "LastModified": datetime(2024, 1, 3, tzinfo=UTC), "ETag": '"y"', "Size": 0,
             "StorageClass": "STANDARD"},
        ],
    })
    parsed = RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": 200}, S3_MODEL.operation_model("ListObjectsV2").output_shape
    )
    assert [c["Key"] for c in parsed["Contents"]] == ["a&b", "ü/<c>"]
    assert parsed["Contents"][0]["Size"] == 5 and parsed["IsTruncated"] is False


# ---------------------------------------------------------------- parsing request documents


def botocore_body(operation: str, params: dict) -> bytes:
    request = RestXMLSerializer().serialize_to_request(params, S3_MODEL.operation_model(operation))
    body = request["body"]
    return body if isinstance(body, bytes) else body.encode()


def test_parse_complete_multipart_upload_from_botocore() -> None:
    parts = [{"PartNumber": 1, "ETag": '"aa"', "ChecksumCRC32": "AAAAAA=="}, {"PartNumber": 3, "ETag": "bb"}]
    body = botocore_body("CompleteMultipartUpload", {
        "Bucket": "b", "Key": "k", "UploadId": "u", "MultipartUpload": {"Parts": parts},
    })
    got = xmlio.parse_complete_multipart_upload(body)
    assert [(p.part_number, p.etag, p.checksums) for p in got] == [(1, "aa", {"crc32": "AAAAAA=="}), (3, "bb", {})]


def test_parse_delete_from_botocore() -> None:
    body = botocore_body("DeleteObjects", {"Bucket": "b", "Delete": {
        "Objects": [{"Key": "a&b"}, {"Key": "c", "VersionId": "v1"}], "Quiet": True,
    }})
    req = xmlio.parse_delete(body)
    assert req.quiet is True
    assert [(o.key, o.version_id) for o in req.objects] == [("a&b", None), ("c", "v1")]


def test_parse_create_bucket_and_versioning() -> None:
    assert xmlio.parse_create_bucket(b"") is None
    body = botocore_body("CreateBucket", {"Bucket": "b", "CreateBucketConfiguration": {"LocationConstraint": "eu"}})
    assert xmlio.parse_create_bucket(body) == "eu"
    body = botocore_body("PutBucketVersioning", {"Bucket": "b", "VersioningConfiguration": {"Status": "Enabled"}})
    assert xmlio.parse_versioning_configuration(body).status == "Enabled"


def parts_xml(numbers: list[int | str]) -> bytes:
    inner = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>e</ETag></Part>" for n in numbers)
    return f"<CompleteMultipartUpload>{inner}</CompleteMultipartUpload>".encode()


def objects_xml(n: int) -> bytes:
    return ("<Delete>" + "<Object><Key>k</Key></Object>" * n + "</Delete>").encode()


@pytest.mark.parametrize(("parse", "body", "code"), [
    (xmlio.parse_complete_multipart_upload, parts_xml([2, 1]), "InvalidPartOrder"),
    (xmlio.parse_complete_multipart_upload, parts_xml([1, 1]), "InvalidPartOrder"),
    (xmlio.parse_complete_multipart_upload, parts_xml([0]), "InvalidArgument"),
    (xmlio.parse_complete_multipart_upload, parts_xml([10001]), "InvalidArgument"),
    (xmlio.parse_complete_multipart_upload, parts_xml(["x"]), "MalformedXML"),
    (xmlio.parse_complete_multipart_upload, parts_xml([]), "MalformedXML"),
    (xmlio.parse_complete_multipart_upload, parts_xml(list(range(1, 10002))), "MalformedXML"),
    (xmlio.parse_complete_multipart_upload,
     b"<CompleteMultipartUpload><Part><ETag>e</ETag></Part></CompleteMultipartUpload>", "MalformedXML"),
    (xmlio.parse_delete, objects_xml(1001), "MalformedXML"),
    (xmlio.parse_delete, objects_xml(0), "MalformedXML"),
    (xmlio.parse_delete, b"<Delete><Object><VersionId>v</VersionId></Object></Delete>", "MalformedXML"),
    (xmlio.parse_delete, b"<Delete><Object><Key>k</Key></Object><Quiet>maybe</Quiet></Delete>", "MalformedXML"),
    (xmlio.parse_delete, b"<Other><Object><Key>k</Key></Object></Other>", "MalformedXML"),
    (xmlio.parse_delete, b"<Delete><Object><Key>k</Key>", "MalformedXML"),
    (xmlio.parse_delete, b"\xff\xfe not xml", "MalformedXML"),
    (xmlio.parse_versioning_configuration,
     b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>", "MalformedXML"),
    (xmlio.parse_create_bucket, b"<CreateBucketConfiguration>" + b" " * (xmlio.MAX_XML_BODY + 1)
     + b"</CreateBucketConfiguration>", "MalformedXML"),
])
def test_invalid_documents(parse, body: bytes, code: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(S3Error) as e:
        parse(body)
    assert e.value.code == code


def test_delete_accepts_exactly_1000_keys_and_complete_10000_parts() -> None:
    assert len(xmlio.parse_delete(objects_xml(1000)).objects) == 1000
    assert len(xmlio.parse_complete_multipart_upload(parts_xml(list(range(1, 10001))))) == 10000


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Delete><Object><Key>&lol3;</Key></Object></Delete>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&xxe;</Key></Object></Delete>"""
DTD_ONLY = b"""<?xml version="1.0"?><!DOCTYPE Delete SYSTEM "http://127.0.0.1:1/x.dtd">
<Delete><Object><Key>k</Key></Object></Delete>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, DTD_ONLY])
def test_hostile_xml_is_malformed(body: bytes) -> None:
    with pytest.raises(S3Error) as e:
        xmlio.parse_delete(body)
    assert e.value.code == "MalformedXML" and e.value.status == 400
