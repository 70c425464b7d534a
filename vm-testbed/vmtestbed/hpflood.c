/* hpflood: a tenant's flood from inside a testbed guest (the Ganeti lab's busybox guests
 * have no Python). Sends frames on IFACE through an AF_PACKET socket as fast as it can
 * for SECONDS, then prints the number of frames sent:
 *   raw   ethertype 0x88b5 (IEEE local experimental: no IP at all), 1000-byte payload
 *   vlan  802.1Q tag (VID 100) around an IPv4/UDP packet
 *   qinq  802.1ad outer tag 0x88a8 (VID 200) + 802.1Q inner (VID 100) + IPv4/UDP
 * Usage: hpflood IFACE raw|vlan|qinq SECONDS MBIT [DST_MAC]   (default: broadcast)
 * The same frames as tests/shaping/flood.py sends from a fake VM. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t ip_udp(unsigned char *p, size_t payload) {
    unsigned short total = 20 + 8 + payload, sum16;
    unsigned long sum = 0;
    unsigned char hdr[20] = {0x45, 0, total >> 8, total & 0xff, 0, 0, 0, 0, 64, 17, 0, 0,
                             192, 0, 2, 200, 192, 0, 2, 1};
    for (int i = 0; i < 20; i += 2) sum += (hdr[i] << 8) | hdr[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    sum16 = ~sum & 0xffff;
    hdr[10] = sum16 >> 8;
    hdr[11] = sum16 & 0xff;
    memcpy(p, hdr, 20);
    unsigned char udp[8] = {0x9c, 0x40, 0, 9, (8 + payload) >> 8, (8 + payload) & 0xff, 0, 0};
    memcpy(p + 20, udp, 8);
    memset(p + 28, 'x', payload);
    return 28 + payload;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: hpflood IFACE raw|vlan|qinq SECONDS MBIT [DST_MAC]\n");
        return 2;
    }
    const char *ifname = argv[1], *kind = argv[2];
    double seconds = atof(argv[3]), mbit = atof(argv[4]);
    unsigned char frame[1600], dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (argc > 5 && sscanf(argv[5], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &dst[0], &dst[1],
                           &dst[2], &dst[3], &dst[4], &dst[5]) != 6) {
        fprintf(stderr, "hpflood: bad MAC %s\n", argv[5]);
        return 2;
    }
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("hpflood: socket"); return 1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("hpflood: SIOCGIFHWADDR"); return 1; }
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = if_nametoindex(ifname);
    if (!to.sll_ifindex) { perror("hpflood: if_nametoindex"); return 1; }
    if (bind(s, (struct sockaddr *)&to, sizeof to) < 0) { perror("hpflood: bind"); return 1; }
    memcpy(frame, dst, 6);
    memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
    size_t len;
    unsigned char *p = frame + 12;
    if (!strcmp(kind, "raw")) {
        p[0] = 0x88; p[1] = 0xb5;
        memset(p + 2, 'x', 1000);
        len = 12 + 2 + 1000;
    } else if (!strcmp(kind, "vlan")) {
        unsigned char tag[6] = {0x81, 0x00, 0x00, 100, 0x08, 0x00};
        memcpy(p, tag, 6);
        len = 12 + 6 + ip_udp(p + 6, 1000);
    } else if (!strcmp(kind, "qinq")) {
        unsigned char tags[10] = {0x88, 0xa8, 0x00, 200, 0x81, 0x00, 0x00, 100, 0x08, 0x00};
        memcpy(p, tags, 10);
        len = 12 + 10 + ip_udp(p + 10, 1000);
    } else {
        fprintf(stderr, "hpflood: unknown kind %s\n", kind);
        return 2;
    }
    printf("go\n");
    fflush(stdout);
    unsigned long sent = 0, tried = 0;
    double start = now(), end = start + seconds, t;
    while ((t = now()) < end) {
        if (mbit > 0) {  /* paced: not ahead of MBIT (counting every frame tried) */
            double ahead = start + tried * len * 8 / (mbit * 1e6) - t;
            if (ahead > 0) {
                struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        for (int i = 0; i < 20; i++, tried++) {
            if (send(s, frame, len, MSG_DONTWAIT) == (ssize_t)len)
                sent++;
            else if (errno != EAGAIN && errno != ENOBUFS) {
                perror("hpflood: send");
                return 1;
            }
        }
    }
    printf("%lu\n", sent);
    return 0;
}
