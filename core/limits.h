/* Named limits shared by every module.  A limit that an operator can change
 * lives in the configuration; these are the defaults and hard ceilings. */
#ifndef CORE_LIMITS_H
#define CORE_LIMITS_H

#define HB_DEFAULT_PORT              2575
#define HB_DEFAULT_MAX_CONNECTIONS   512
#define HB_DEFAULT_MAX_MESSAGE_BYTES (16u * 1024u * 1024u)
#define HB_MAX_MESSAGE_BYTES_CEILING (256u * 1024u * 1024u)
#define HB_DEFAULT_IDLE_TIMEOUT_S    600
#define HB_MAX_LISTENERS             32

/* Mapping lookup tables (mapping.lookups): how many, and the ceilings of one
 * table's CSV file, so a wrong file (a whole database export) is refused at
 * load instead of filling memory. */
#define HB_MAX_LOOKUP_TABLES         32
#define HB_MAX_LOOKUP_ROWS           2000000u
#define HB_MAX_LOOKUP_FILE_BYTES     (256u * 1024u * 1024u)
#define HB_MAX_LOOKUP_FIELD_BYTES    1024u

/* SMS settings by scheduling facility (sinks.sms.facilities): entries, and
 * facility codes in one entry.  Each entry's zone is loaded at start-up. */
#define HB_MAX_SMS_FACILITIES        64
#define HB_MAX_SMS_FACILITY_CODES    64

/* HL7 parser: segments and fields indexed per message.  Beyond these the
 * message is rejected with AR rather than indexed partially. */
#define HL7_MAX_SEGMENTS             65536
#define HL7_MAX_FIELDS_PER_SEGMENT   1024

/* Store hand-off queue: how many messages may wait for the writer before the
 * network loop stops reading (back-pressure), and how many go in one
 * transaction at most. */
#define STORE_QUEUE_CAPACITY         8192
#define STORE_MAX_GROUP              1024
/* Longest the writer waits for the messages of other active senders before
 * committing a smaller group (see store_set_expected_group). */
#define STORE_GATHER_US              200

/* ACK text built for one message never exceeds this. */
#define HL7_ACK_MAX_BYTES            4096

#endif
