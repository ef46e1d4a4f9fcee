// Carries ?next= into the form, so signing in lands on the page that asked for it.
const next = new URLSearchParams(location.search).get("next");
if (next) document.getElementById("next").value = next;
