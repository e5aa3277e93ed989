/* core/xml_text: text placed inside XML / SVG documents (labels, titles, attribute values) with the five characters
 * XML reserves escaped. The SVG pictures of the evaluation (eval/throughput_svg) and the KVSharer search
 * (search/kvsharer_svg) write their labels through it. */
#ifndef XLKV_CORE_XML_TEXT_H
#define XLKV_CORE_XML_TEXT_H

#include <stdio.h>

/* Writes `text` (NULL: nothing) to out with < > & " ' as entities; every other byte as it is. */
void xlkv_put_xml_escaped(FILE *out, const char *text);

#endif
