"""What the browser tests do in a page: log in, drop a file on the drop zone, tell a drawn chart
from a blank one."""

import base64

# How many pixels of a canvas are drawn on (not transparent): 0 means a blank chart.
DRAWN_PIXELS = """(id) => {
    const canvas = document.getElementById(id);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn += 1;
    return drawn;
}"""


DROP = """([data, name]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: "application/octet-stream" }));
    const zone = document.getElementById("dropzone");
    zone.dispatchEvent(new DragEvent("dragenter", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


def log_in(page, live_server, username="alice", password="alice-password-123"):
    page.goto(live_server.url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#dropzone")
    # The drop zone is parsed before upload.js runs: a drop before "load" went nowhere.
    page.wait_for_load_state("load")


def drop_file(page, data: bytes, name: str):
    page.evaluate(DROP, [base64.b64encode(data).decode(), name])
