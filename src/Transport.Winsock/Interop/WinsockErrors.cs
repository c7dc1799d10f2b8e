using System.Net.Sockets;

namespace Transport.Winsock.Interop;

/// <summary>What the transport does about a Winsock error from the calls it makes itself.</summary>
internal enum WinsockErrorAction
{
    /// <summary>The call did what was asked.</summary>
    Done,

    /// <summary>ERROR_IO_PENDING: started and still running; not a failure.</summary>
    InProgress,

    /// <summary>WSAENOTCONN: the peer is already gone; skip the half-close, the socket is closed plainly.</summary>
    NotConnected,

    /// <summary>WSAEINVAL: bad flags, or a socket that did not recycle properly; never reuse it.</summary>
    DiscardSocket,

    /// <summary>Anything else: the socket is closed and the error logged.</summary>
    Fail,
}

internal static class WinsockErrors
{
    public static WinsockErrorAction Classify(SocketError error) => error switch
    {
        SocketError.Success => WinsockErrorAction.Done,
        SocketError.IOPending => WinsockErrorAction.InProgress,
        SocketError.NotConnected => WinsockErrorAction.NotConnected,
        SocketError.InvalidArgument => WinsockErrorAction.DiscardSocket,
        _ => WinsockErrorAction.Fail,
    };
}
