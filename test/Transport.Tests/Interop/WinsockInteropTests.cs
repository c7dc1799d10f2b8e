using System.Net.Sockets;
using System.Runtime.Versioning;
using Transport.Tests.Infrastructure;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Interop;

namespace Transport.Tests.Interop;

/// <summary>The Winsock calls the transport makes itself, on the real ws2_32.dll (Windows, or Windows under Wine).</summary>
public sealed class WinsockInteropTests
{
    [Fact(Skip = WinePlatform.NotWindowsApi, SkipUnless = nameof(WinePlatform.IsWindowsApi), SkipType = typeof(WinePlatform))]
    [SupportedOSPlatform("windows")]
    public void The_tcp_provider_has_the_AcceptEx_and_DisconnectEx_functions()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Assert.Equal(SocketError.Success, WinsockExtensions.Probe(socket, WinsockExtensions.AcceptEx));
        Assert.Equal(SocketError.Success, WinsockExtensions.Probe(socket, WinsockExtensions.DisconnectEx));
    }

    [Fact(Skip = WinePlatform.NotWindowsApi, SkipUnless = nameof(WinePlatform.IsWindowsApi), SkipType = typeof(WinePlatform))]
    [SupportedOSPlatform("windows")]
    public void An_unknown_extension_function_is_reported_missing()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Assert.NotEqual(SocketError.Success, WinsockExtensions.Probe(socket, Guid.NewGuid()));
    }

    [Fact]
    public void Winsock_errors_map_to_what_the_transport_does()
    {
        Assert.Equal(WinsockErrorAction.Done, WinsockErrors.Classify(SocketError.Success));
        Assert.Equal(WinsockErrorAction.InProgress, WinsockErrors.Classify(SocketError.IOPending));
        Assert.Equal(WinsockErrorAction.NotConnected, WinsockErrors.Classify(SocketError.NotConnected));
        Assert.Equal(WinsockErrorAction.DiscardSocket, WinsockErrors.Classify(SocketError.InvalidArgument));
        Assert.Equal(WinsockErrorAction.Fail, WinsockErrors.Classify(SocketError.ConnectionReset));
    }

    [Fact]
    public void An_accept_into_a_recycled_socket_failing_with_WSAEINVAL_or_WSAENOTSOCK_means_it_was_not_recycled()
    {
        Assert.True(PostedAccepts.IsNotRecycled(SocketError.InvalidArgument));
        Assert.True(PostedAccepts.IsNotRecycled(SocketError.NotSocket));
        Assert.False(PostedAccepts.IsNotRecycled(SocketError.ConnectionReset));
        Assert.False(PostedAccepts.IsNotRecycled(SocketError.TooManyOpenSockets));
    }
}
