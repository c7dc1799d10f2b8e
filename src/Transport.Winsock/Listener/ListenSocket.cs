using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;

namespace Transport.Winsock.Listener;

internal static class ListenSocket
{
    /// <summary>Creates, binds and starts a listening socket; a busy address surfaces as Kestrel's <see cref="AddressInUseException"/>.</summary>
    /// <param name="endPoint">Where to listen.</param>
    /// <param name="backlog">The pending connection queue's length.</param>
    /// <param name="noDelay">Sets TCP_NODELAY on the listening socket, for the accepted sockets to inherit.</param>
    public static Socket Bind(IPEndPoint endPoint, int backlog, bool noDelay)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // As in Kestrel: the IPv6 any-address also takes IPv4.
            if (endPoint.Address.Equals(IPAddress.IPv6Any))
            {
                socket.DualMode = true;
            }

            socket.NoDelay = noDelay;
            socket.Bind(endPoint);
            socket.Listen(backlog);
            return socket;
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            socket.Dispose();
            throw new AddressInUseException(ex.Message, ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
