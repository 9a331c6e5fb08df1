// The model page's Online card: a snippet's Copy button. Where the clipboard is not
// offered (a page over plain HTTP on another host), the snippet is selected to copy by hand.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const snippet = document.getElementById(button.dataset.copy);
  try {
    await navigator.clipboard.writeText(snippet.textContent);
    button.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(snippet);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = "Selected: copy it";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});
