/* dashboard: the operator's page served at GET /, balancer/dashboard.html,
 * and its script at GET /dashboard.js, balancer/dashboard.js, turned into
 * byte arrays at build time (balancer/embed.cmake), so the binary needs no
 * file beside it and the page no CDN. */
#ifndef BERTH_DASHBOARD_H
#define BERTH_DASHBOARD_H

#include <stddef.h>

extern const unsigned char dashboard_html[]; /* not NUL-terminated */
extern const size_t dashboard_html_len;
extern const unsigned char dashboard_js[]; /* not NUL-terminated */
extern const size_t dashboard_js_len;

#endif
