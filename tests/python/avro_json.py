"""What the Python readers share: decoded Avro values made comparable with the
bridge's own JSON decoding."""

import datetime

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    """timestamp-millis fields as integer milliseconds (fastavro returns them as
    datetimes), in nested records and lists too."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
