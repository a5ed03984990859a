// The run page: render every stored answer as sanitised Markdown (see markdown.js).
window.renderMarkdownIn(document);
