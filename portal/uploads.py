"""An upload handler that streams a package to a temporary file and refuses early.

It computes the sha256 on the way, refuses a file that does not start like a
pickle after its first chunk, and stops reading once the file passes
MAX_PACKAGE_BYTES, so a 2 GB upload never reaches the disk whole.
"""

import hashlib

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from scoring.storage import NotAPickle, check_pickle_header, human_bytes


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.digest = hashlib.sha256()
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        if start == 0:
            try:
                check_pickle_header(raw_data[:2])
            except NotAPickle as exc:
                self.request.upload_error = str(exc)
                raise StopUpload(connection_reset=False) from None
        self.received += len(raw_data)
        if self.received > settings.MAX_PACKAGE_BYTES:
            limit = human_bytes(settings.MAX_PACKAGE_BYTES)
            self.request.upload_error = f"the file is larger than the limit of {limit}"
            raise StopUpload(connection_reset=False)
        self.digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        file = super().file_complete(file_size)
        if file is not None:
            file.sha256 = self.digest.hexdigest()
        return file
