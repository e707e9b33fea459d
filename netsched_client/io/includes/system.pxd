# C declarations for the batched UDP socket: sendmmsg/recvmmsg, cmsg, addresses.
#
# The shim below keeps the extension compiling where there is no
# sendmmsg/recvmmsg (macOS): there the calls fail with ENOSYS and the package
# selects the pure-Python socket instead, so the build never depends on the OS.

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from posix.uio cimport iovec


cdef extern from * nogil:
    """
    #include <errno.h>
    #include <string.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    #ifdef __linux__
    #include <netinet/udp.h>
    typedef struct mmsghdr ns_mmsghdr;
    static inline int ns_sendmmsg(int fd, ns_mmsghdr *msgs, unsigned int n) {
        return sendmmsg(fd, msgs, n, 0);
    }
    static inline int ns_recvmmsg(int fd, ns_mmsghdr *msgs, unsigned int n) {
        return recvmmsg(fd, msgs, n, 0, NULL);
    }
    #else
    typedef struct { struct msghdr msg_hdr; unsigned int msg_len; } ns_mmsghdr;
    static inline int ns_sendmmsg(int fd, ns_mmsghdr *msgs, unsigned int n) {
        (void)fd; (void)msgs; (void)n; errno = ENOSYS; return -1;
    }
    static inline int ns_recvmmsg(int fd, ns_mmsghdr *msgs, unsigned int n) {
        (void)fd; (void)msgs; (void)n; errno = ENOSYS; return -1;
    }
    #endif
    /* one test: EAGAIN and EWOULDBLOCK are equal on Linux, not everywhere */
    #define NS_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    cdef struct sockaddr:
        sa_family_t sa_family

    cdef struct sockaddr_storage:
        sa_family_t ss_family

    cdef struct in_addr:
        uint32_t s_addr

    cdef struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    cdef struct in6_addr:
        uint8_t s6_addr[16]

    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    ctypedef struct ns_mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int ns_sendmmsg(int fd, ns_mmsghdr *msgs, unsigned int n)
    int ns_recvmmsg(int fd, ns_mmsghdr *msgs, unsigned int n)
    bint NS_WOULD_BLOCK(int err)

    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)

    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)

    enum:
        AF_INET
        AF_INET6
        IPPROTO_IP
        IPPROTO_IPV6
        IP_TOS
        IPV6_TCLASS
        SOL_UDP
        UDP_SEGMENT
        UDP_GRO
        MSG_TRUNC
        INET6_ADDRSTRLEN
        EINTR
        EIO
        EINVAL
        ECONNREFUSED
