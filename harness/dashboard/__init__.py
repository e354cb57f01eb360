"""`raftkv dashboard`: a live web page of a running cluster, fed by its controller.

app.py serves the page and a server-sent-event stream, and carries the page's buttons
out as the same controller commands the CLI verbs run; static/ is the page itself
(plain HTML, CSS and JavaScript, no build step).
"""
