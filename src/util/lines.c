/* lines.c - see lines.h. */
#include "lines.h"

#include <ctype.h>
#include <string.h>

char *lines_next(FILE *f, char *buf, size_t n, int *lineno) {
    while (fgets(buf, (int)n, f)) {
        ++*lineno;
        buf[strcspn(buf, "#")] = '\0';
        char *s = buf;
        while (isspace((unsigned char)*s)) s++;
        size_t len = strlen(s);
        while (len && isspace((unsigned char)s[len - 1])) s[--len] = '\0';
        if (len) return s;
    }
    return NULL;
}
