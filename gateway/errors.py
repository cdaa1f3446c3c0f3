"""S3 errors: the one table of error codes, HTTP statuses and messages, and the XML error response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.xmlio import XmlValue


@dataclass(frozen=True)
class ErrorSpec:
    """How S3 answers one error code: the HTTP status and the message used when the raiser gives none."""

    status: int
    message: str


# After Garage's api/s3/error.rs and the S3 API reference: clients key their
# retry and error handling on (status, Code), so both must match S3 exactly.
ERRORS: dict[str, ErrorSpec] = {
    # authentication and authorization
    "AccessDenied": ErrorSpec(403, "Access Denied"),
    "InvalidAccessKeyId": ErrorSpec(403, "The AWS Access Key Id you provided does not exist in our records."),
    "SignatureDoesNotMatch": ErrorSpec(
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    ),
    "RequestTimeTooSkewed": ErrorSpec(
        403, "The difference between the request time and the current time is too large."
    ),
    "AuthorizationHeaderMalformed": ErrorSpec(400, "The authorization header you provided is invalid."),
    "AuthorizationQueryParametersError": ErrorSpec(400, "Query-string authentication parameters are invalid."),
    "ExpiredToken": ErrorSpec(400, "The provided token has expired."),
    "InvalidToken": ErrorSpec(400, "The provided token is malformed or otherwise invalid."),
    "MissingSecurityHeader": ErrorSpec(400, "Your request is missing a required header."),
    "InvalidSecurity": ErrorSpec(403, "The provided security credentials are not valid."),
    "XAmzContentSHA256Mismatch": ErrorSpec(
        400, "The provided 'x-amz-content-sha256' header does not match what was computed."
    ),
    "InvalidChunkSizeError": ErrorSpec(403, "Only the last chunk is allowed to have a size less than 8192 bytes"),
    # buckets
    "NoSuchBucket": ErrorSpec(404, "The specified bucket does not exist"),
    "BucketAlreadyExists": ErrorSpec(
        409,
        "The requested bucket name is not available. The bucket namespace is shared by all users "
        "of the system. Please select a different name and try again.",
    ),
    "BucketAlreadyOwnedByYou": ErrorSpec(
        409, "Your previous request to create the named bucket succeeded and you already own it."
    ),
    "BucketNotEmpty": ErrorSpec(409, "The bucket you tried to delete is not empty"),
    "InvalidBucketName": ErrorSpec(400, "The specified bucket is not valid."),
    "InvalidBucketState": ErrorSpec(409, "The request is not valid with the current state of the bucket."),
    "InvalidLocationConstraint": ErrorSpec(400, "The specified location-constraint is not valid"),
    "IllegalLocationConstraintException": ErrorSpec(
        400, "The location constraint specified does not match the region of this endpoint."
    ),
    "IllegalVersioningConfigurationException": ErrorSpec(
        400, "The Versioning element must be specified"
    ),
    "TooManyBuckets": ErrorSpec(400, "You have attempted to create more buckets than allowed"),
    "NoSuchBucketPolicy": ErrorSpec(404, "The bucket policy does not exist"),
    "NoSuchLifecycleConfiguration": ErrorSpec(404, "The lifecycle configuration does not exist"),
    "NoSuchCORSConfiguration": ErrorSpec(404, "The CORS configuration does not exist"),
    "NoSuchTagSet": ErrorSpec(404, "The TagSet does not exist"),
    "NoSuchWebsiteConfiguration": ErrorSpec(404, "The specified bucket does not have a website configuration"),
    "ServerSideEncryptionConfigurationNotFoundError": ErrorSpec(
        404, "The server side encryption configuration was not found"
    ),
    "ObjectLockConfigurationNotFoundError": ErrorSpec(404, "Object Lock configuration does not exist for this bucket"),
    "NoSuchPublicAccessBlockConfiguration": ErrorSpec(404, "The public access block configuration was not found"),
    "OwnershipControlsNotFoundError": ErrorSpec(404, "The bucket ownership controls were not found"),
    "ReplicationConfigurationNotFoundError": ErrorSpec(404, "The replication configuration was not found"),
    # objects and versions
    "NoSuchKey": ErrorSpec(404, "The specified key does not exist."),
    "NoSuchVersion": ErrorSpec(404, "The specified version does not exist."),
    "KeyTooLongError": ErrorSpec(400, "Your key is too long"),
    "InvalidObjectName": ErrorSpec(400, "Object name contains unsupported characters."),
    "InvalidStorageClass": ErrorSpec(400, "The storage class you specified is not valid"),
    "InvalidObjectState": ErrorSpec(403, "The operation is not valid for the current state of the object."),
    "MetadataTooLarge": ErrorSpec(400, "Your metadata headers exceed the maximum allowed metadata size."),
    "InvalidTag": ErrorSpec(400, "The tag provided was not a valid tag."),
    "InvalidPartNumber": ErrorSpec(416, "The requested partnumber is not satisfiable"),
    "InvalidRange": ErrorSpec(416, "The requested range is not satisfiable"),
    "PreconditionFailed": ErrorSpec(412, "At least one of the pre-conditions you specified did not hold"),
    "NotModified": ErrorSpec(304, "Not Modified"),
    "ConditionalRequestConflict": ErrorSpec(
        409, "The conditional request cannot succeed due to a conflicting operation against this resource."
    ),
    "OperationAborted": ErrorSpec(
        409, "A conflicting conditional operation is currently in progress against this resource. Try again."
    ),
    # multipart uploads
    "NoSuchUpload": ErrorSpec(
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed.",
    ),
    "InvalidPart": ErrorSpec(
        400,
        "One or more of the specified parts could not be found.  The part may not have been uploaded, "
        "or the specified entity tag may not match the part's entity tag.",
    ),
    "InvalidPartOrder": ErrorSpec(
        400, "The list of parts was not in ascending order. Parts must be ordered by part number."
    ),
    "EntityTooSmall": ErrorSpec(400, "Your proposed upload is smaller than the minimum allowed object size."),
    "EntityTooLarge": ErrorSpec(400, "Your proposed upload exceeds the maximum allowed size"),
    # request body and integrity
    "InvalidDigest": ErrorSpec(400, "The Content-MD5 you specified is not valid."),
    "BadDigest": ErrorSpec(400, "The Content-MD5 you specified did not match what we received."),
    "IncompleteBody": ErrorSpec(400, "You did not provide the number of bytes specified by the Content-Length HTTP header"),
    "MissingContentLength": ErrorSpec(411, "You must provide the Content-Length HTTP header."),
    "MissingRequestBodyError": ErrorSpec(400, "Request Body is empty"),
    "MalformedXML": ErrorSpec(
        400, "The XML you provided was not well-formed or did not validate against our published schema"
    ),
    "MalformedPOSTRequest": ErrorSpec(400, "The body of your POST request is not well-formed multipart/form-data."),
    "RequestIsNotMultiPartContent": ErrorSpec(400, "Bucket POST must be of the enclosure-type multipart/form-data."),
    "MaxMessageLengthExceeded": ErrorSpec(400, "Your request was too big."),
    "RequestTimeout": ErrorSpec(
        400, "Your socket connection to the server was not read from or written to within the timeout period."
    ),
    "UnexpectedContent": ErrorSpec(400, "This request does not support content"),
    # request shape
    "InvalidArgument": ErrorSpec(400, "Invalid Argument"),
    "InvalidRequest": ErrorSpec(400, "Invalid Request"),
    "InvalidURI": ErrorSpec(400, "Couldn't parse the specified URI."),
    "InvalidEncodingType": ErrorSpec(400, "Invalid Encoding Method specified in Request"),
    "MethodNotAllowed": ErrorSpec(405, "The specified method is not allowed against this resource."),
    "NotImplemented": ErrorSpec(501, "A header you provided implies functionality that is not implemented"),
    # server side
    "InternalError": ErrorSpec(500, "We encountered an internal error. Please try again."),
    "ServiceUnavailable": ErrorSpec(503, "Service is unable to handle request."),
    "SlowDown": ErrorSpec(503, "Please reduce your request rate."),
}

XmlExtra = Mapping[str, "XmlValue"]


class S3Error(Exception):
    """An S3 error raised by any layer of the gateway; the server turns it into an XML error response.

    `extra` holds the additional child elements of <Error> that S3 sends for
    some codes (BucketName, Key, ServerTime, ArgumentName, ...), in order.
    """

    code: str
    message: str
    status: int
    resource: str | None
    extra: dict[str, XmlValue]
    headers: dict[str, str]

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        resource: str | None = None,
        extra: XmlExtra | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        spec = ERRORS.get(code)
        if spec is None:
            # A typo in a code would silently send clients an unknown error; fail loudly in tests instead.
            raise ValueError(f"unknown S3 error code {code!r}")
        self.code = code
        self.message = message if message is not None else spec.message
        self.status = status if status is not None else spec.status
        self.resource = resource
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}")

    def __repr__(self) -> str:
        return f"S3Error({self.code!r}, {self.message!r}, status={self.status})"


def error_body(err: S3Error, request_id: str, resource: str) -> bytes:
    """The XML document S3 sends for an error (no namespace, as S3 does)."""
    # Imported here because xmlio raises S3Error while parsing: errors is the lower layer.
    from gateway.xmlio import render

    content: dict[str, XmlValue] = {
        "Code": err.code,
        "Message": err.message,
        "Resource": err.resource if err.resource is not None else resource,
        "RequestId": request_id,
    }
    for name, value in err.extra.items():
        if name not in content:
            content[name] = value
    return render("Error", content, xmlns=False)


def error_response(err: S3Error, request_id: str, resource: str, head: bool = False) -> web.Response:
    """The HTTP response for `err`: XML body, x-amz-request-id; no body for HEAD requests and 304."""
    headers = {"x-amz-request-id": request_id, **err.headers}
    if head or err.status == 304:
        # HEAD responses cannot carry a body; clients read the status (and x-amz-error-* is not S3's style).
        return web.Response(status=err.status, headers=headers)
    headers["Content-Type"] = "application/xml"
    return web.Response(status=err.status, body=error_body(err, request_id, resource), headers=headers)
