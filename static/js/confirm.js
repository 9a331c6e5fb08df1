// A button with data-confirm asks before it submits. One listener on the document, so the
// rows My models re-renders as it polls ask too.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
