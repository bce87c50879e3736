"""An upload handler that cuts off a file larger than the largest upload the portal takes, while it streams.

Django spools an uploaded file to a temporary file before a view sees it; without this a file of any size
would fill FILE_UPLOAD_TEMP_DIR first. The cap is the largest of the per-feature limits
(DATASET_UPLOAD_MAX_BYTES, MAX_UPLOAD_BYTES); each feature still checks its own limit. A refused file is
left out of request.FILES and named in `request.upload_refused` (field name, limit), so the view can say
which field was too large instead of "this field is required".
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


def upload_cap() -> int:
    return max(int(settings.DATASET_UPLOAD_MAX_BYTES), int(settings.MAX_UPLOAD_BYTES))


class LimitedUploadHandler(FileUploadHandler):
    """Passes chunks on to the next handler until a file grows past upload_cap(), then stops the upload."""

    def receive_data_chunk(self, raw_data, start):
        limit = upload_cap()
        if start + len(raw_data) > limit:
            if self.request is not None:
                self.request.upload_refused = (self.field_name, limit)
            # Read and drop the rest of the body (no connection reset: the client gets a clear 4xx).
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size):
        return None
