using System.Net;
using System.Net.Sockets;

namespace Transport.Tests.Infrastructure;

/// <summary>Whether this host has IPv6 loopback (::1): containers often run with IPv6 disabled.</summary>
public static class Ipv6Loopback
{
    public const string Unavailable = "This host has no IPv6 loopback (::1 cannot be bound), as in containers with IPv6 disabled.";

    public static bool IsAvailable { get; } = Probe();

    private static bool Probe()
    {
        if (!Socket.OSSupportsIPv6)
        {
            return false;
        }

        try
        {
            using var socket = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
            socket.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
