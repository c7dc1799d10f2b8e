using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using Transport.Tests.Infrastructure;
using Transport.Winsock.Interop;

namespace Transport.Tests.Interop;

/// <summary>The Winsock calls the transport makes itself, on the real ws2_32.dll (Windows, or Windows under Wine).</summary>
public sealed class WinsockInteropTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

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

    [Fact(Skip = WinePlatform.NotWindowsApi, SkipUnless = nameof(WinePlatform.IsWindowsApi), SkipType = typeof(WinePlatform))]
    [SupportedOSPlatform("windows")]
    public async Task WSASendDisconnect_sends_a_fin_after_the_data_and_the_peer_reads_end_of_stream()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = await RawClient.ConnectAsync((IPEndPoint)listener.LocalEndPoint!);
        using var server = await listener.AcceptAsync(TestContext.Current.CancellationToken);

        await server.SendAsync("last words"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
        Assert.Equal(SocketError.Success, WinsockNative.SendDisconnect(server.SafeHandle));

        Assert.Equal("last words"u8.ToArray(), await RawClient.ReadToFinAsync(client, Timeout));
        // Only the send side is closed: the server still receives.
        await client.SendAsync("reply"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
        var buffer = new byte[5];
        Assert.Equal(5, await server.ReceiveAsync(buffer, SocketFlags.None, TestContext.Current.CancellationToken));
    }

    [Fact(Skip = WinePlatform.NotWindowsApi, SkipUnless = nameof(WinePlatform.IsWindowsApi), SkipType = typeof(WinePlatform))]
    [SupportedOSPlatform("windows")]
    public void WSASendDisconnect_on_a_socket_that_never_connected_reports_not_connected()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var error = WinsockNative.SendDisconnect(socket.SafeHandle);
        Assert.Equal(SocketError.NotConnected, error);
        Assert.Equal(WinsockErrorAction.NotConnected, WinsockErrors.Classify(error));
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
}
