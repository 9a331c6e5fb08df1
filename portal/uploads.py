"""An upload handler that streams a package to a temporary file and refuses early.

It computes the sha256 on the way, refuses an upload whose Content-Length is over
MAX_PACKAGE_BYTES before reading its file, refuses a file that does not start like a
pickle after its first chunk, and stops reading once the file passes MAX_PACKAGE_BYTES
(a client may send no length, or a wrong one), so a 2 GB upload never reaches the disk.

A refusal stops parsing at once (connection_reset): the answer goes out without the
rest of the body being read first.
"""

import hashlib

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from scoring.packages.storage import NotAPickle, check_pickle_header, human_bytes

# Room for the form fields and multipart boundaries around the file in a request body.
FORM_ALLOWANCE_BYTES = 1024**2


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.content_length = content_length
        # None: Django parses the body; new_file refuses before the file is read. Refusing
        # here would also skip the CSRF token the drop zone's form sends ahead of the file.

    def new_file(self, *args, **kwargs):
        request_bytes = getattr(self, "content_length", 0) or 0
        if request_bytes > settings.MAX_PACKAGE_BYTES + FORM_ALLOWANCE_BYTES:
            self.refuse(f"{too_large()} (the upload is {human_bytes(request_bytes)})")
        super().new_file(*args, **kwargs)
        self.digest = hashlib.sha256()
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        if start == 0:
            try:
                check_pickle_header(raw_data[:2])
            except NotAPickle as exc:
                self.refuse(str(exc))
        self.received += len(raw_data)
        if self.received > settings.MAX_PACKAGE_BYTES:
            self.refuse(too_large())
        self.digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        file = super().file_complete(file_size)
        if file is not None:
            file.sha256 = self.digest.hexdigest()
        return file

    def refuse(self, message: str):
        """The views answer with request.upload_error; what was received is dropped."""
        self.request.upload_error = message
        raise StopUpload(connection_reset=True)


def too_large() -> str:
    return f"the file is larger than the limit of {human_bytes(settings.MAX_PACKAGE_BYTES)}"
